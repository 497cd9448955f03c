"""The single-row fast paths (codec + post-processing) answer exactly like the batch path."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime import Model
from edge_runtime.errors import ValidationError


@pytest.fixture(scope="module")
def model(cancer_bundle):
    return Model.load(cancer_bundle)


def test_single_row_equals_vectorised(model, cancer_data):
    x, _, names = cancer_data
    assert model._one is not None
    for r in x[:40]:
        row = dict(zip(names, map(float, r)))
        slow = model.to_rows(model.score_array(model.codec.encode([row])))
        assert model.predict(row) == slow
        np.testing.assert_array_equal(model.codec.encode(row), model.codec.encode([row]))


def test_single_row_with_ints_and_errors(model, cancer_data):
    x, _, names = cancer_data
    row = {n: int(v) for n, v in zip(names, x[0])}
    assert model.predict(row) == model.to_rows(model.score_array(model.codec.encode([row])))
    for bad, field in [({**row, "mean_area": float("nan")}, "rows[0].mean_area"),
                       ({**row, "mean_area": "1"}, "rows[0].mean_area"),
                       ({**row, "mean_area": True}, "rows[0].mean_area"),
                       ({k: v for k, v in row.items() if k != "mean_area"}, "rows[0].mean_area"),
                       ({**row, "zzz": 1.0}, "rows[0].zzz")]:
        with pytest.raises(ValidationError) as ei:
            model.predict(bad)
        assert ei.value.field == field


def test_range_checked_on_the_fast_path(tmp_path, cancer_data, cancer_model, keypair):
    import json

    from edge_runtime.bundle import sign_bundle
    from tests.conftest import build_sklearn_bundle

    x, _, names = cancer_data
    out = build_sklearn_bundle(tmp_path / "b", cancer_model, x, names, key=keypair[0])
    m = json.loads((out / "manifest.json").read_text())
    m["inputs"]["features"][0].update(min=0.0, max=50.0)
    (out / "manifest.json").write_text(json.dumps(m))
    sign_bundle(out, keypair[0])
    model = Model.load(out)
    row = dict(zip(names, map(float, x[0])))
    assert model.predict(row)[0]["probability"] >= 0
    with pytest.raises(ValidationError, match=r"rows\[0\].mean_radius: 51 is outside"):
        model.predict({**row, "mean_radius": 51.0})
