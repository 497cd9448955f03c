"""Models that take a table (text categories, columns selected by name) in one feature tensor.

The edge runtime feeds a bundle one float matrix in the contract's feature order
(``edge_runtime.contract``); a text category arrives there as its index in the
manifest's ``categories`` (-1 for an unseen one). A scikit-learn pipeline trained
on a DataFrame wants one input per column instead, text as text: skl2onnx
converts it with one named input per column (``ColumnTransformer`` selecting by
name then works), and :func:`with_front` puts a small graph in front that
splits the float matrix into those columns and turns each code back into its
text with ``ai.onnx.ml.LabelEncoder`` (an unseen code becomes
``__unseen_category__``, which the model's encoder treats as its
``handle_unknown`` says).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from converters.heldout import UNSEEN
from converters.sample import Sample


def needs_columns(model: Any, smp: Sample) -> bool:
    """True for text features or a ColumnTransformer that selects columns by name."""
    if any(smp.dtypes.get(n) == "string" for n in smp.names):
        return True
    return any(isinstance(c, str) or (isinstance(c, (list, tuple)) and c and isinstance(c[0], str))
               for m in _all(model) for _, _, c in getattr(m, "transformers", []) or [])


def _all(model: Any):
    yield model
    for _, step in getattr(model, "steps", []) or []:
        yield from _all(step)
    for _, step, _c in getattr(model, "transformers", []) or []:
        if not isinstance(step, str):
            yield from _all(step)


def initial_types(smp: Sample) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    out = []
    for n in smp.names:
        dt = smp.dtypes.get(n)
        if dt == "string":
            out.append((n, StringTensorType([None, 1])))
        elif dt in ("int64", "int32") and not np.isnan(smp.x[:, smp.names.index(n)]).any():
            out.append((n, Int64TensorType([None, 1])))
        else:
            out.append((n, FloatTensorType([None, 1])))
    return out


def with_front(onx: Any, smp: Sample, input_name: str = "input") -> Any:
    """The skl2onnx model behind a front that takes one float (n, k) matrix."""
    from onnx import TensorProto, helper

    g = onx.graph
    want = {i.name: i.type.tensor_type.elem_type for i in g.input}
    nodes = []
    inits = []
    for j, n in enumerate(smp.names):
        if n not in want:  # a column the model drops: nothing to feed
            continue
        idx = f"__col_{j}"
        inits.append(helper.make_tensor(idx, TensorProto.INT64, [1], [j]))
        col = f"__x_{j}"
        nodes.append(helper.make_node("Gather", [input_name, idx], [col], axis=1,
                                      name=f"front_gather_{j}"))
        t = want[n]
        if t == TensorProto.STRING:
            cats = smp.categories.get(n, [])
            nodes.append(helper.make_node(
                "LabelEncoder", [col], [n], domain="ai.onnx.ml", name=f"front_text_{j}",
                keys_floats=[float(i) for i in range(len(cats))], values_strings=list(cats),
                default_string=UNSEEN))
        elif t == TensorProto.FLOAT:
            nodes.append(helper.make_node("Identity", [col], [n], name=f"front_id_{j}"))
        else:
            nodes.append(helper.make_node("Cast", [col], [n], to=t, name=f"front_cast_{j}"))
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    g.initializer.extend(inits)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                 [None, len(smp.names)]))
    ml = [o for o in onx.opset_import if o.domain == "ai.onnx.ml"]
    if not ml:
        onx.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    elif ml[0].version < 2:  # LabelEncoder with float keys needs ai.onnx.ml 2
        ml[0].version = 2
    return onx


def unknown_policy(model: Any, smp: Sample) -> dict[str, str]:
    """Per text feature: ``allow`` when the source model answers a row holding an unseen
    category (its encoder ignores / maps unknowns), ``reject`` when it raises."""
    out = {}
    base = smp.x[:1].copy()
    for j, n in enumerate(smp.names):
        if smp.dtypes.get(n) != "string":
            continue
        x = base.copy()
        x[0, j] = -1.0  # the unseen code
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.predict(smp.frame(x))
            out[n] = "allow"
        except Exception:  # noqa: BLE001 - any refusal of the model counts as "reject"
            out[n] = "reject"
    return out
