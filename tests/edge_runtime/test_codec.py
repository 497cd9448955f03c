"""RowCodec batch path: order, types, NaN policy, ranges, one-feature contracts."""

from __future__ import annotations

import math

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
