"""The reconciler's install jitter (``[hub] install_jitter_s``, issue 14): a download waits a random
0…install_jitter_s, a newer desired document ends the wait, a rollback to the previous model
(a local slot swap) is never delayed. No timings are asserted (the host is shared)."""

from __future__ import annotations

import threading

from edge_runtime.bundle import pack_bundle, read_bundle
from edge_runtime.protocol import DesiredBundle, DesiredState
from edge_runtime.reconcile import Reconciler


def _reconciler(store, tmp_path, **kw):
    events: list[dict] = []
    meta: dict[str, str] = {}
    r = Reconciler("d1", store, lambda step, **f: events.append({"step": step, **f}),
                   meta_get=lambda k, d="": meta.get(k, d), meta_set=meta.__setitem__,
                   download_dir=tmp_path, allow_file_urls=True, **kw)
    return r, events


def _doc(doc_id: str, url: str, digest: str, version: str = "1.0.0") -> DesiredState:
    return DesiredState(id=doc_id, bundles={"active": DesiredBundle(name="cancer", version=version, url=url,
                                                                      sha256=digest)})


def test_setting_defaults_small_and_reaches_the_reconciler(tmp_path):
    from edge_runtime.settings import EdgeSettings

    s = EdgeSettings(device={"id": "d1"}, store={"dir": str(tmp_path)}, dev=True)
    assert 0 < s.hub.install_jitter_s <= 5
    s2 = EdgeSettings(device={"id": "d1"}, store={"dir": str(tmp_path)}, hub={"install_jitter_s": 0}, dev=True)
    assert s2.hub.install_jitter_s == 0


def test_download_waits_its_jitter_once(store, cancer_bundle, tmp_path):
    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    digest = read_bundle(cancer_bundle).digest
    r, events = _reconciler(store, tmp_path, install_jitter_s=0.2)
    r.submit(_doc("doc-1", tar.as_uri(), digest))
    assert r.wait_idle(60)
    assert store.slot("active").sha256 == digest
    assert 0 <= r.last_jitter_s <= 0.2
    steps = [e["step"] for e in events]
    assert steps[0] == "received" and "downloading" in steps and steps[-1] == "active"


def test_a_newer_document_ends_the_wait_and_the_old_one_is_never_installed(store, cancer_bundle, tmp_path):
    store.install(cancer_bundle, "active")
    digest = read_bundle(cancer_bundle).digest
    r, events = _reconciler(store, tmp_path, install_jitter_s=600)  # would wait up to 10 minutes
    received = threading.Event()
    emit = r.emit
    r.emit = lambda step, **f: (emit(step, **f), step == "received" and received.set())
    r.submit(_doc("doc-new", (tmp_path / "never-read.tar").as_uri(), "ab" * 32, "2.0.0"))
    assert received.wait(30)
    r.submit(_doc("doc-back", (tmp_path / "unused.tar").as_uri(), digest))  # what runs already
    assert r.wait_idle(30)  # not 600 s: the newer document ended the jitter
    assert r.settled_id == "doc-back"
    assert not any(e["step"] == "downloading" for e in events)
    assert store.slot("active").sha256 == digest
    r.stop()


def test_rollback_to_the_previous_model_is_not_delayed(store, cancer_bundle, cancer_bundle_v2, tmp_path):
    store.install(cancer_bundle, "active")
    store.install(cancer_bundle_v2, "active")  # cancer_bundle is now "previous"
    digest = read_bundle(cancer_bundle).digest
    r, events = _reconciler(store, tmp_path, install_jitter_s=600)
    r.submit(_doc("doc-rollback", (tmp_path / "unused.tar").as_uri(), digest))
    assert r.wait_idle(30)
    assert store.slot("active").sha256 == digest
    assert [e["step"] for e in events] == ["received", "rolled_back", "active"]
    assert r.last_jitter_s == 0


def test_stop_ends_the_wait(store, cancer_bundle, tmp_path):
    r, events = _reconciler(store, tmp_path, install_jitter_s=600)
    r.submit(_doc("doc-1", (tmp_path / "never.tar").as_uri(), "cd" * 32))
    r.stop()  # joins the worker (30 s at most); the jitter must not hold it
    assert r._thread is None or not r._thread.is_alive()
    assert not any(e["step"] == "downloading" for e in events)
