"""RowCodec batch path: order, types, NaN policy, ranges, one-feature contracts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from edge_runtime.codec import RowCodec
from edge_runtime.errors import ValidationError
from edge_runtime.manifest import Inputs


def codec(*features):
    return RowCodec(Inputs(kind="features", tensor="x", features=list(features)))


def test_contract_order_and_dtype():
    c = codec({"name": "b"}, {"name": "a", "nan": "allow"})
    x = c.encode([{"a": 1, "b": 2.5}, {"b": 0, "a": None}, {"a": np.float64(3.0), "b": -1}])
    assert x.dtype == np.float32 and x.shape == (3, 2)
    assert x[0].tolist() == [2.5, 1.0] and math.isnan(x[1, 1]) and x[2].tolist() == [-1.0, 3.0]


def test_single_feature_contract():
    c = codec({"name": "only"})
    assert c.encode([{"only": 1}, {"only": 2}]).tolist() == [[1.0], [2.0]]
    assert c.encode({"only": 3}).tolist() == [[3.0]]
    with pytest.raises(ValidationError, match="rows\\[1\\].only: expected a number, got str"):
        c.encode([{"only": 1}, {"only": "2"}])


@pytest.mark.parametrize("rows,field", [
    ([{"a": 1, "b": None}], "rows[0].b"),
    ([{"a": 1, "b": 2}, {"a": float("nan"), "b": 1}], "rows[1].a"),
    ([{"a": 1, "b": "x"}], "rows[0].b"),
    ([{"a": 1, "b": False}], "rows[0].b"),
    ([{"a": 1, "b": {"v": 1}}], "rows[0].b"),
    ([{"a": 1}], "rows[0].b"),
    ([{"a": 1, "b": 2, "c": 3}], "rows[0].c"),
    ([{"a": 1, "b": 2}, [1, 2]], "rows[1]"),
    ([{"a": 11, "b": 2}], "rows[0].a"),
    ([], "rows"),
    ("a,b", "rows"),
])
def test_refusals_name_the_field(rows, field):
    c = codec({"name": "a", "min": 0, "max": 10}, {"name": "b"})
    with pytest.raises(ValidationError) as ei:
        c.encode(rows)
    assert ei.value.field == field


@pytest.mark.parametrize("value,needle", [
    (float("inf"), "inf is not allowed for this feature (not a finite float32)"),
    (-float("inf"), "-inf is not allowed"),
    (1e39, "1e+39 is not allowed for this feature (not a finite float32)"),  # inf in float32
    (-(10**40), "-1e+40 is not allowed"),
])
def test_non_finite_and_overflowing_values_are_refused(value, needle):
    """The NaN policy covers every non-finite value: an inf reaching the model gives garbage."""
    c = codec({"name": "a"}, {"name": "b"}, {"name": "c", "nan": "allow"})
    for rows in ({"a": 1, "b": value, "c": 0}, [{"a": 1, "b": 2, "c": 0}, {"a": 1, "b": value, "c": 0}]):
        with pytest.raises(ValidationError, match=re.escape(needle)) as ei:
            c.encode(rows)
        assert ei.value.field == ("rows[0].b" if isinstance(rows, dict) else "rows[1].b")
    # where the policy allows NaN, non-finite values pass through (the model handles them)
    x = c.encode({"a": 1, "b": 3.4e38, "c": value})
    assert x[0, 1] == np.float32(3.4e38) and not np.isfinite(x[0, 2])


def test_single_row_fast_path_agrees_on_large_values():
    c = codec({"name": "a"}, {"name": "b"})
    big = float(np.finfo(np.float32).max)
    assert c.encode({"a": big, "b": -big}).tolist() == c.encode([{"a": big, "b": -big}]).tolist()
    with pytest.raises(ValidationError, match=r"rows\[0\].a"):
        c.encode({"a": big * 2, "b": 0})
