"""PredictService hooks (router, observers), micro-batching and failure containment."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from cloud_hub.inference import MicroBatcher, Target
from edge_runtime.errors import ValidationError
from edge_runtime.model import Model
from tests.cloud_hub.hub_support import row_of


class SplitByKey:
    """A router that sends odd entity keys to the challenger (what hub-routing plugs in)."""

    def key_field(self, name):
        return "customer_id"

    def route(self, req):
        odd = [i for i, k in enumerate(req.keys or []) if k is not None and int(k) % 2]
        even = [i for i in range(len(req.rows)) if i not in odd]
        return [Target(f"{req.name}@champion", "champion", even), Target(f"{req.name}@challenger", "challenger", odd)]


def test_router_and_observers(hub, cancer_bundle, cancer_bundle_v2, cancer_data):
    hub.registry.push(cancer_bundle, aliases=["champion"])
    hub.registry.push(cancer_bundle_v2, aliases=["challenger"])
    svc = hub.inference
    svc.set_router(SplitByKey())
    seen = []
    svc.add_observer(seen.append)
    svc.add_observer(lambda r: 1 / 0)  # a broken observer must not break the answer
    rows = [{**row_of(cancer_data, i), "customer_id": str(i)} for i in range(6)]
    result = svc.predict_sync("cancer", rows)
    preds = result.predictions
    assert [p["group"] for p in preds] == ["champion", "challenger"] * 3
    assert [p["model_version"] for p in preds] == ["1.0.0", "2.0.0"] * 3
    assert [p["customer_id"] for p in preds] == [str(i) for i in range(6)]
    v2 = Model.load(cancer_bundle_v2).predict([row_of(cancer_data, 1)])[0]
    assert preds[1]["probability"] == pytest.approx(v2["probability"], abs=1e-6)
    assert len(seen) == 1 and [p.target.group for p in seen[0].parts] == ["champion", "challenger"]
    assert seen[0].parts[1].x.shape == (3, 30)  # encoded rows, reusable by a shadow
    text = hub.metrics.render()[0].decode()
    assert 'group="challenger",model="cancer",version="2.0.0"' in text
    svc.set_router(None)
    with pytest.raises(ValidationError) as e:
        svc.predict_sync("cancer", [{**row_of(cancer_data), "customer_id": "1"}])
    assert e.value.field == "rows[0].customer_id"


def test_microbatcher_merges_and_splits(cancer_bundle, cancer_data):
    model = Model.load(cancer_bundle)
    x, _, _ = cancer_data
    batcher = MicroBatcher(model, max_size=64, max_wait=0.005)
    calls = []
    real = model.score_array

    def counted(a):
        calls.append(len(a))
        return real(a)

    model.score_array = counted

    async def late(i):  # a request parsed a loop turn later still joins the batch
        await asyncio.sleep(0)
        return await batcher.submit(x[i:i + 2])

    async def go():
        first = [batcher.submit(x[i:i + 2]) for i in range(0, 20, 2)]
        return await asyncio.gather(*first, *[late(i) for i in range(20, 40, 2)])

    parts = asyncio.run(go())
    want = real(x[:40]).probability
    got = np.concatenate([p.probability for p in parts])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert calls == [40], calls  # 20 requests of 2 rows, one engine call
    # the batches of a fast model now run inline (no thread hop); answers are the same
    parts = asyncio.run(go())
    np.testing.assert_allclose(np.concatenate([p.probability for p in parts]), want, atol=1e-12)
    assert calls == [40, 40] and 0 < batcher._row_cost * 40 <= batcher.inline_max_s
    batcher.close()


def test_engine_failure_is_500_without_trace(server, cancer_bundle, cancer_data, monkeypatch):
    url, hub = server
    hub.registry.push(cancer_bundle)
    _, model = hub.models.get("cancer")

    def boom(x):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(model, "score_array", boom)
    for path, body in (("/v1/models/cancer/predict", row_of(cancer_data)),
                       ("/v2/models/cancer/infer", {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32",
                                                                "data": cancer_data[0][0].tolist()}]})):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 500 and r.json() == {"error": "internal error", "code": "internal_error"}
        assert "secret" not in r.text and "Traceback" not in r.text
    text = hub.metrics.render()[0].decode()
    for ep in ("predict", "oip"):  # a model failure on either endpoint, per version
        assert (f'hub_predict_model_errors_total{{code="internal_error",endpoint="{ep}",group="",'
                f'model="cancer",version="1.0.0"}} 1.0') in text
    monkeypatch.undo()
    assert httpx.post(url + "/v1/models/cancer/predict", json=row_of(cancer_data)).status_code == 200


def test_error_observers_see_model_failures_not_client_errors(hub, cancer_bundle, cancer_data):
    """Routed target without a resolvable alias, and a non-EdgeError engine crash, reach the error
    observers with group and version; a bad row (422) and an unknown model asked for directly (404)
    do not; nothing is called on success; a broken error observer never changes the client's error."""
    from edge_runtime.errors import EdgeError, NotFoundError

    hub.registry.push(cancer_bundle, aliases=["champion"])  # no challenger alias
    svc = hub.inference
    class NonEmpty(SplitByKey):  # only the groups that got rows
        def route(self, req):
            return [t for t in super().route(req) if t.rows]

    svc.set_router(NonEmpty())
    failures = []
    svc.add_error_observer(failures.append)
    svc.add_error_observer(lambda f: 1 / 0)
    ok = [{**row_of(cancer_data, 0), "customer_id": "2"}]
    assert svc.predict_sync("cancer", ok).predictions and failures == []
    with pytest.raises(NotFoundError):  # challenger alias missing: the caller asked for "cancer"
        svc.predict_sync("cancer", [{**row_of(cancer_data, 0), "customer_id": "1"}])
    (f,) = failures
    assert (f.target.group, f.version, f.code, f.target.rows) == ("challenger", None, "not_found", [0])
    bad = {**row_of(cancer_data, 0), "customer_id": "2"}
    del bad[next(iter(row_of(cancer_data, 0)))]
    with pytest.raises(ValidationError):
        svc.predict_sync("cancer", [bad])
    svc.set_router(None)
    with pytest.raises(EdgeError):
        svc.predict_sync("nope", [row_of(cancer_data, 0)])
    assert len(failures) == 1
    mv, model = hub.models.get("cancer")

    def crash(x):
        raise RuntimeError("engine crashed")

    model.score_array = crash
    with pytest.raises(RuntimeError):
        svc.predict_sync("cancer", [row_of(cancer_data, 0)])
    assert len(failures) == 2 and failures[1].version.version == mv.version
    assert failures[1].code == "internal_error" and failures[1].target.group is None
    text = hub.metrics.render()[0].decode()
    assert 'hub_predict_model_errors_total{code="not_found",endpoint="predict",group="challenger",' \
           'model="cancer",version=""} 1.0' in text
    assert (f'hub_predict_model_errors_total{{code="internal_error",endpoint="predict",group="",'
            f'model="cancer",version="{mv.version}"}} 1.0') in text
    assert 'code="invalid_input"' not in text.split("hub_predict_model_errors")[1].split("# HELP")[0]
