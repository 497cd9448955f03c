"""The device model store: install steps, refusals, rollback, promote, remove, recovery."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from edge_runtime.bundle import pack_bundle, read_bundle
from edge_runtime.errors import BundleError, ConflictError, NotFoundError, StoreError
from edge_runtime.profile import load_profile
from edge_runtime.store import ModelStore


def _digest(path):
    return read_bundle(path).digest


def test_empty_store_has_no_active_model(store):
    assert store.model("active") is None
    assert store.status()["slots"] == {"active": None, "shadow": None, "previous": None}


def test_install_activates_after_every_check(store, cancer_bundle, rows):
    events = []
    report = store.install(cancer_bundle, progress=lambda e, info: events.append(e))
    assert report.switched and report.golden_checked == 1
    assert report.p99_ms > 0 and report.p99_ms >= report.p50_ms
    assert events == ["staged", "verified", "loaded", "self_test_passed", "budget_ok", "active"]
    model = store.model("active")
    assert model.digest == _digest(cancer_bundle)
    assert len(model.predict(rows)) == 5
    st = store.status()
    assert st["slots"]["active"]["version"] == "1.0.0"
    assert st["journal"][0]["state"] == "ok" and st["journal"][0]["op"] == "install"
    # the bundle was copied into the store: the source can go away
    held = store.dir / "bundles" / model.digest
    assert (held / "manifest.json").exists()
    assert (store.dir / "active").resolve() == held.resolve()
    assert list((store.dir / "tmp").iterdir()) == []


def test_second_install_keeps_previous_and_rollback_swaps(store, cancer_bundle, cancer_bundle_v2, rows):
    store.install(cancer_bundle)
    store.install(cancer_bundle_v2)
    assert store.model("active").version == "2.0.0"
    assert store.slot("previous").version == "1.0.0"
    p2 = store.model("active").predict(rows)
    info = store.rollback()
    assert info.version == "1.0.0"
    assert store.model("active").version == "1.0.0"
    assert store.slot("previous").version == "2.0.0"
    assert store.model("active").predict(rows) != p2
    assert [j["op"] for j in store.journal(3)] == ["rollback", "install", "install"]
    # rolling back again rolls forward
    assert store.rollback().version == "2.0.0"


def test_reinstalling_the_active_bundle_is_a_noop(store, cancer_bundle):
    store.install(cancer_bundle)
    report = store.install(cancer_bundle)
    assert report.switched is False
    assert store.journal(1)[0]["state"] == "noop"
    assert store.slot("previous") is None


def test_install_from_tar(store, cancer_bundle, tmp_path):
    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    assert store.install(tar).switched
    assert store.model("active").digest == _digest(cancer_bundle)
    tar.unlink()  # the store keeps its own unpacked copy, not a reference to the tar
    held = [p for p in (store.dir / "bundles").iterdir()]
    assert len(held) == 1 and held[0].is_dir() and (held[0] / "manifest.json").is_file()
    assert store.model("active").self_test() == 1


def test_shadow_install_promote_and_remove(store, cancer_bundle, cancer_bundle_v2):
    store.install(cancer_bundle)
    store.install(cancer_bundle_v2, slot="shadow")
    assert store.model("shadow").version == "2.0.0"
    assert store.model("active").version == "1.0.0"
    store.promote()
    assert store.model("active").version == "2.0.0"
    assert store.slot("shadow") is None and store.slot("previous").version == "1.0.0"
    store.remove("previous")
    assert store.slot("previous") is None
    assert len(list((store.dir / "bundles").iterdir())) == 1
    with pytest.raises(ConflictError, match="active model cannot be removed"):
        store.remove("active")
    with pytest.raises(NotFoundError, match="shadow is empty"):
        store.remove("shadow")
    with pytest.raises(NotFoundError, match="unknown slot"):
        store.model("canary")
    with pytest.raises(ConflictError, match="no shadow"):
        store.promote()
    with pytest.raises(ConflictError, match="only 'active' or 'shadow'"):
        store.install(cancer_bundle, slot="previous")


def test_rollback_without_previous_is_refused(store, cancer_bundle):
    store.install(cancer_bundle)
    with pytest.raises(ConflictError, match="no previous bundle"):
        store.rollback()


def _tampered(src, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("case", ["hash", "signature", "missing_file", "manifest", "golden",
                                  "not_found"])
def test_refused_install_names_the_step_and_keeps_the_old_model(
        case, store, cancer_bundle, cancer_bundle_v2, tmp_path, rows, keypair, other_keypair):
    store.install(cancer_bundle)
    before = store.model("active").predict(rows)
    bad = tmp_path / "bad"
    if case != "not_found":
        shutil.copytree(cancer_bundle_v2, bad)
    man = bad / "manifest.json"
    if case == "hash":
        bad = _tampered(cancer_bundle_v2, tmp_path)
        step, needle = "verify", "model.onnx sha256 mismatch"
    elif case == "signature":
        from edge_runtime.bundle import sign_bundle
        sign_bundle(bad, other_keypair[0])
        step, needle = "verify", "bad signature"
    elif case == "missing_file":
        (bad / "model.onnx").unlink()
        step, needle = "verify", "model.onnx listed in the manifest is missing"
    elif case == "manifest":
        m = json.loads(man.read_text())
        m["format"] = "pickle"
        man.write_text(json.dumps(m))
        step, needle = "stage", "invalid manifest: format"
    elif case == "golden":
        from edge_runtime.bundle import sign_bundle
        m = json.loads(man.read_text())
        m["golden"][0]["expected_probability"][0] += 0.5
        man.write_text(json.dumps(m))
        sign_bundle(bad, keypair[0])
        step, needle = "self_test", "golden[0].expected_probability: row 0"
    else:
        step, needle = "stage", "bundle not found"
    with pytest.raises((StoreError, BundleError)) as ei:
        store.install(bad)
    assert str(ei.value).startswith(f"{step}: ")
    assert needle in str(ei.value)
    assert store.model("active").version == "1.0.0"
    assert store.model("active").predict(rows) == before
    last = store.journal(1)[0]
    assert last["state"] == "failed" and last["step"] == step
    assert list((store.dir / "tmp").iterdir()) == []
    assert len(list((store.dir / "bundles").iterdir())) == 1


def test_budget_check_refuses_a_slow_model(tmp_path, keypair, cancer_bundle, cancer_bundle_v2):
    strict = replace(load_profile("x86-gateway"), name="strict", latency_budget_ms=1e-6)
    with ModelStore(tmp_path / "s", load_profile("x86-gateway"), keypair[1], latency_runs=20) as s:
        s.install(cancer_bundle)
    with ModelStore(tmp_path / "s", strict, keypair[1], latency_runs=20) as s:
        with pytest.raises(StoreError, match=r"^budget: single-row p99 .* exceeds the strict "
                                             r"latency budget") as ei:
            s.install(cancer_bundle_v2)
        assert ei.value.field == "profile.latency_budget_ms"
        assert s.model("active").version == "1.0.0"
    tiny = replace(load_profile("x86-gateway"), name="tiny", memory_budget_mb=-1)
    with ModelStore(tmp_path / "s", tiny, keypair[1], latency_runs=20) as s:
        with pytest.raises(StoreError, match="memory budget"):
            s.install(cancer_bundle_v2)


def test_budget_check_measures_again_before_refusing(tmp_path, keypair, cancer_bundle, monkeypatch):
    """Two preempted calls in a round of 20 must not refuse a fast model on a busy device: a round
    over the budget is timed again and the best round is judged; a model slow in every round is
    refused with every round's p99 in the message."""
    import time as _time

    import edge_runtime.store as store_mod

    real = store_mod._single_row_call
    slow_calls = {"left": 2}

    def flaky(model):
        call = real(model)

        def timed():
            if slow_calls["left"] > 0:  # the first round: two calls preempted for 60 ms
                slow_calls["left"] -= 1
                _time.sleep(0.06)
            return call()
        return timed

    monkeypatch.setattr(store_mod, "_single_row_call", flaky)
    prof = replace(load_profile("x86-gateway"), name="gw50", latency_budget_ms=50.0)
    with ModelStore(tmp_path / "a", prof, keypair[1], latency_runs=20) as s:
        report = s.install(cancer_bundle)
    assert report.p99_ms < 50.0 and slow_calls["left"] == 0

    slow_calls["left"] = 10**6  # slow in every round
    with ModelStore(tmp_path / "b", prof, keypair[1], latency_runs=20) as s:
        with pytest.raises(StoreError, match=r"best of 3 rounds of 20 runs: [\d.]+, [\d.]+, [\d.]+ ms\) "
                                             r"exceeds the gw50 latency budget 50 ms"):
            s.install(cancer_bundle)


def test_unsigned_bundle_needs_allow_unsigned(tmp_path, cancer_bundle):
    unsigned = tmp_path / "unsigned"
    shutil.copytree(cancer_bundle, unsigned)
    m = json.loads((unsigned / "manifest.json").read_text())
    m.pop("signature")
    (unsigned / "manifest.json").write_text(json.dumps(m))
    with ModelStore(tmp_path / "a", "x86-gateway", None, latency_runs=20) as s:
        with pytest.raises(BundleError, match="verify: bundle is not signed"):
            s.install(unsigned)
    with ModelStore(tmp_path / "b", "x86-gateway", None, require_signature=False,
                    latency_runs=20) as s:
        assert s.install(unsigned).switched


def test_store_is_locked_while_open(store, keypair):
    with pytest.raises(StoreError, match="in use by pid"):
        ModelStore(store.dir, "x86-gateway", keypair[1])


def test_reopen_loads_active_and_shadow(tmp_path, keypair, cancer_bundle, cancer_bundle_v2):
    with ModelStore(tmp_path / "s", "rpi4", keypair[1], latency_runs=20) as s:
        s.install(cancer_bundle)
        s.install(cancer_bundle_v2, slot="shadow")
    with ModelStore(tmp_path / "s", "rpi4", keypair[1]) as s:
        assert s.model("active").version == "1.0.0"
        assert s.model("shadow").version == "2.0.0"
        assert s.recovery == []


def test_corrupt_active_bundle_falls_back_to_previous(tmp_path, keypair, cancer_bundle,
                                                      cancer_bundle_v2):
    with ModelStore(tmp_path / "s", "x86-gateway", keypair[1], latency_runs=20) as s:
        s.install(cancer_bundle)
        s.install(cancer_bundle_v2)
        digest = s.model("active").digest
    f = tmp_path / "s" / "bundles" / digest / "model.onnx"
    f.write_bytes(f.read_bytes()[:-10])
    with ModelStore(tmp_path / "s", "x86-gateway", keypair[1]) as s:
        assert s.model("active").version == "1.0.0"
        assert s.slot("previous") is None
        assert any("reactivated previous" in r for r in s.recovery)


def test_other_keys_refused(tmp_path, cancer_bundle, other_keypair):
    with ModelStore(tmp_path / "s", "x86-gateway", other_keypair[1], latency_runs=20) as s:
        with pytest.raises(BundleError, match="^verify: bad signature"):
            s.install(cancer_bundle)
        assert s.model("active") is None


def test_rss_falls_back_to_proc_never_zero(monkeypatch):
    """The memory budget check must not be skipped silently when psutil is unusable."""
    import sys

    import psutil

    from edge_runtime import store as store_mod

    real = psutil.Process().memory_info().rss
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil → ImportError
    got = store_mod._rss()
    assert 0.5 * real < got < 2 * real
    monkeypatch.setattr(store_mod.Path, "read_text", lambda self, *a, **k: "garbage")
    with pytest.raises(StoreError, match="cannot measure memory") as ei:
        store_mod._rss()
    assert ei.value.field == "profile.memory_budget_mb"
