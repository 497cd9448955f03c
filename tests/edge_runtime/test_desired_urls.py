"""Devices refuse file:// (and non-https under an https hub) bundle URLs in desired
documents unless ``[hub] allow_file_urls = true`` (issue 13)."""

from __future__ import annotations

import pytest

from edge_runtime.bundle import pack_bundle
from edge_runtime.protocol import DesiredBundle, DesiredState
from edge_runtime.reconcile import Reconciler


def _reconciler(store, tmp_path, **kw):
    events: list[dict] = []
    meta: dict[str, str] = {}
    r = Reconciler("d1", store, lambda step, **f: events.append({"step": step, **f}),
                   meta_get=lambda k, d="": meta.get(k, d), meta_set=meta.__setitem__,
                   download_dir=tmp_path, **kw)
    return r, events


def _doc(url: str, digest: str) -> DesiredState:
    return DesiredState(id="doc-1", bundles={"active": DesiredBundle(name="cancer", version="1.0.0", url=url,
                                                                       sha256=digest)})


def test_file_url_is_refused_by_default(store, cancer_bundle, tmp_path):
    from edge_runtime.bundle import read_bundle

    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    r, events = _reconciler(store, tmp_path)
    assert r.apply(_doc(tar.as_uri(), read_bundle(cancer_bundle).digest)) is False
    failed = [e for e in events if e["step"] == "failed"]
    assert failed and "allow_file_urls" in failed[0]["reason"]
    assert not any(e["step"] == "downloading" for e in events)
    assert store.slot("active") is None


def test_file_url_is_installed_when_allowed(store, cancer_bundle, tmp_path):
    from edge_runtime.bundle import read_bundle

    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    r, _ = _reconciler(store, tmp_path, allow_file_urls=True)
    assert r.apply(_doc(tar.as_uri(), read_bundle(cancer_bundle).digest)) is True
    assert store.slot("active").sha256 == read_bundle(cancer_bundle).digest


@pytest.mark.parametrize("hub_url,url,ok", [
    ("https://hub.example", "http://hub.example/v1/bundles/x", False),
    ("https://hub.example", "/v1/bundles/x", True),
    ("http://hub.example", "ftp://hub.example/x", False),
    ("http://hub.example", "http://cdn.example/x", True),
    (None, "data:application/x-tar;base64,AAAA", False),
])
def test_url_policy(store, tmp_path, hub_url, url, ok):
    r, _ = _reconciler(store, tmp_path, hub_url=hub_url)
    assert (r.url_problem(url) is None) is ok


def test_setting_reaches_the_agent(tmp_path):
    from edge_runtime.settings import load_settings

    cfg = tmp_path / "device.toml"
    cfg.write_text('[device]\nid = "d1"\n[hub]\nurl = "http://127.0.0.1:1"\nallow_file_urls = true\n')
    assert load_settings(cfg).hub.allow_file_urls is True


def test_unreachable_hub_is_retrying_not_a_failed_install(store, cancer_bundle, tmp_path):
    """A download that cannot reach the hub (killed, restarting, network down) is retried with
    backoff and reported as ``retrying``: rollout gates count ``failed`` as the candidate's refusal
    (it rolled a good candidate back when the hub was SIGKILLed mid-stage)."""
    import socket

    from edge_runtime.bundle import read_bundle
    from edge_runtime.reconcile import TransientError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r, events = _reconciler(store, tmp_path, install_jitter_s=0)
    with pytest.raises(TransientError):
        r.apply(_doc(f"http://127.0.0.1:{port}/v1/bundles/x", read_bundle(cancer_bundle).digest))
    steps = [e["step"] for e in events]
    assert "failed" not in steps and steps[-1] == "retrying", steps
    assert "refused" in events[-1]["reason"] or "failed" in events[-1]["reason"]
    assert store.slot("active") is None
