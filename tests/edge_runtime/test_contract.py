"""FeatureContract: one check for JSON rows, numeric matrices and columns, same refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.contract import KINDS, FeatureContract, FeatureKind, Refusal
from edge_runtime.errors import ValidationError
from edge_runtime.manifest import Inputs


def contract(*features, dtype="float32"):
    return FeatureContract(Inputs(kind="features", tensor="x", features=list(features)), dtype=dtype)


C = {"a": {"name": "a", "min": 0, "max": 10}, "b": {"name": "b"}, "c": {"name": "c", "nan": "allow"},
         "flag": {"name": "flag", "dtype": "bool"}}


def test_bool_feature_takes_true_false_and_0_1():
    c = contract(C["b"], C["flag"])
    x = c.encode([{"b": 1.5, "flag": True}, {"b": 2, "flag": False}, {"b": 3, "flag": 1}])
    assert x.tolist() == [[1.5, 1.0], [2.0, 0.0], [3.0, 1.0]]
    for bad, why in [(2, "expected true or false, got 2"), ("yes", "expected true or false, got 'yes'"),
                     (None, "missing value (null/NaN)")]:
        with pytest.raises(ValidationError, match=why.replace("(", r"\(").replace(")", r"\)")) as ei:
            c.encode({"b": 1.0, "flag": bad})
        assert ei.value.field == "rows[0].flag"
    # a number feature refuses booleans, JSON or numpy
    for v in (True, np.bool_(False)):
        with pytest.raises(ValidationError, match="expected a number, got bool"):
            c.encode({"b": v, "flag": True})
    # numeric matrices and columns: 0/1 only for the bool feature
    with pytest.raises(ValidationError, match="rows\\[1\\].flag: expected true or false") as ei:
        c.check(np.array([[1.0, 1.0], [1.0, 0.5]]))
    assert c.column_refusals(1, np.array([True, False])) == []
    assert [(r.row, r.reason) for r in c.column_refusals(0, np.array([True, False]))] == [
        (0, "expected a number, got bool"), (1, "expected a number, got bool")]
    got = c.column_refusals(1, np.array([0.0, 2.0, np.nan]))
    assert [(r.row, r.reason) for r in got] == [(1, "expected true or false (or 0/1), got 2"),
                                                (2, "missing value (null/NaN) is not allowed for this feature")]


@pytest.mark.parametrize("value,needle", [
    (float("nan"), "missing value (null/NaN) is not allowed"),
    (None, "missing value (null/NaN) is not allowed"),
    (float("inf"), "inf is not allowed for this feature (not a finite float32)"),
    (1e39, "1e+39 is not allowed for this feature (not a finite float32)"),
    pytest.param(10**400, "inf is not allowed", id="int-beyond-float64"),
    (11, "11 is outside the allowed range [0, 10]"),
])
def test_rows_matrix_and_columns_refuse_alike(value, needle):
    """The same value gives the same refusal from JSON rows, a matrix and a column."""
    c = contract(C["a"], C["b"], C["c"])
    feat = "a" if value == 11 else "b"
    row = {"a": 1, "b": 2.0, "c": 0.5, feat: value}
    with pytest.raises(ValidationError) as ei:
        c.encode([{"a": 1, "b": 2, "c": 3}, row])
    assert ei.value.field == f"rows[1].{feat}" and needle in ei.value.message
    if isinstance(value, int) and value > 1e300:
        return
    x = np.array([[1, 2, 3], [row["a"], math.nan if row["b"] is None else row["b"], 0.5]], dtype=np.float64)
    r = c.first_refusal(x)
    assert (r.field, r.code) == (f"rows[1].{feat}", ei.value.code) and needle in r.message
    j = c.index[feat]
    got = c.column_refusals(j, x[:, j])
    assert [r.row for r in got] == [1] and needle in got[0].row_reason and got[0].feature == feat


def test_allow_lets_non_finite_through():
    c = contract(C["b"], C["c"])
    x = c.encode({"b": 1.0, "c": 1e39})
    assert np.isinf(x[0, 1])
    assert c.column_refusals(1, np.array([np.nan, np.inf])) == []


def test_first_feature_in_contract_order_wins_within_a_row():
    c = contract(C["a"], C["b"])
    # a type problem in b is found while decoding, a range problem in a by the value check: a first
    with pytest.raises(ValidationError) as ei:
        c.encode([{"a": 11, "b": "x"}])
    assert ei.value.field == "rows[0].a"
    # a whole-row problem wins over values; the first bad row is reported
    with pytest.raises(ValidationError) as ei:
        c.encode([{"a": 1, "b": 1}, {"a": 11}, {"a": 1, "b": None}])
    assert ei.value.field == "rows[1].b" and "missing feature(s) b" in ei.value.message
    x, dec = c.decode_rows([{"a": 11, "b": "x"}, {"a": 1, "b": 1}, {"a": 1, "b": None}, [1]])
    got = c.refusals(x, dec)
    assert sorted(got) == [0, 2, 3]
    assert got[0].feature == "a" and got[2].feature == "b" and got[3].field == "rows[3]"


def test_valid_rows_are_kept_apart_from_refused_ones():
    c = contract(C["a"], C["b"])
    x, keep, refused = c.encode_valid([{"a": 1, "b": 2}, {"a": 1, "b": "2"}, {"a": 3, "b": 4}])
    assert keep == [0, 2] and x.tolist() == [[1, 2], [3, 4]] and list(refused) == [1]
    assert refused[1].row_reason == "b: expected a number, got str"


def test_integer_engine_input_takes_whole_numbers():
    c = contract(C["b"], dtype="int64")
    assert c.encode({"b": 3}).tolist() == [[3]]
    with pytest.raises(ValidationError, match="not a whole number"):
        c.encode({"b": 2.5})


def test_a_new_kind_registers_by_dtype(monkeypatch):
    """The extension point: a feature dtype is a FeatureKind in KINDS."""

    class Percent(FeatureKind):
        name = "percent"
        plain = False

        def from_value(self, v):
            if isinstance(v, str) and v.endswith("%"):
                return float(v[:-1]) / 100
            return super().from_value(v)

    monkeypatch.setitem(KINDS, "float64", Percent())
    c = contract({"name": "p", "dtype": "float64"})
    assert c.encode([{"p": "50%"}, {"p": 0.25}]).tolist() == [[0.5], [0.25]]
    assert isinstance(c.first_refusal(np.array([[np.nan]])), Refusal)


def test_empty_and_malformed_requests():
    c = contract(C["b"])
    for rows, field in [([], "rows"), ("b", "rows"), ([[1]], "rows[0]"), ([{"b": 1, "z": 2}], "rows[0].z")]:
        with pytest.raises(ValidationError) as ei:
            c.encode(rows)
        assert ei.value.field == field


def test_device_shadow_applies_the_candidates_own_contract(tmp_path, cancer_data, cancer_model, keypair,
                                                             cancer_bundle):
    """The active model's encoded inputs reach the candidate through its contract (a range the
    active model does not have refuses them: a shadow error, not a silent score)."""
    import json

    from edge_runtime import Model
    from edge_runtime.bundle import sign_bundle
    from edge_runtime.shadow_compare import ShadowComparator
    from edge_runtime.telemetry import TelemetryRecorder
    from tests.conftest import build_sklearn_bundle

    x, _, names = cancer_data
    out = build_sklearn_bundle(tmp_path / "cand", cancer_model, x, names, key=keypair[0], version="2.0.0")
    m = json.loads((out / "manifest.json").read_text())
    hi = float(x[:8, 0].max())  # the golden rows stay inside the range
    m["inputs"]["features"][0].update(min=0.0, max=hi)
    (out / "manifest.json").write_text(json.dumps(m))
    sign_bundle(out, keypair[0])
    active, cand = Model.load(cancer_bundle), Model.load(out)
    comp = ShadowComparator(lambda: cand, TelemetryRecorder("dev", resources=False))
    small = x[x[:, 0] <= hi][:5]
    big = x[x[:, 0] > hi][:5]
    for rows in (small, big):
        xa = active.codec.encode([dict(zip(names, map(float, r))) for r in rows])
        s = active.score_array(xa)
        comp.compare(cand, xa, s.score, active.decision(s), names=active.codec.names)
    assert comp.compared == len(small) and comp.errors == 1
