"""Tree ensembles exactly as scikit-learn routes them: thresholds and missing values.

skl2onnx (1.20) writes scikit-learn trees into ONNX ``TreeEnsemble*`` nodes but,
measured on held-out rows against scikit-learn 1.9:

- ``RandomForest*`` / ``ExtraTrees*`` / ``DecisionTree*`` trained with missing
  values: the per-node ``missing_go_to_left`` is dropped, so every NaN goes right
  (0.0045 "low" where scikit-learn says 0.879 "high");
- ``HistGradientBoosting*``: leaves get a Python ``False`` for
  ``missing_value_tracks_true`` (``TypeError: Expected an int, got a boolean``,
  nothing exports), and its thresholds are rounded to the nearest float32, so a
  float32 input equal to a split value can go down the other branch.

``exact_trees()`` fixes both while skl2onnx converts (a scoped, lock-guarded
patch of its tree-building helpers): every split carries scikit-learn's
``missing_go_to_left`` and its threshold is the largest float32 ``w`` with
``x <= t  <=>  x <= w`` for every float32 ``x`` (the contract feeds float32).
Categorical splits of ``HistGradientBoosting*`` (bitsets) have no ONNX
TreeEnsemble equivalent in opset ``ai.onnx.ml`` 3: they are refused by name.
The held-out parity gate of ``converters.export`` measures the result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edge_runtime.errors import ValidationError

_LOCK = threading.RLock()


def floor32(t: float) -> float:
    """The largest float32 ``w`` with ``x <= t  <=>  x <= w`` for every float32 ``x``."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    return float(f)


def refuse_unsupported(model: Any) -> None:
    """Refuse tree models whose routing ONNX cannot express (before converting)."""
    for m in _estimators(model):
        preds = getattr(m, "_predictors", None)
        if not preds:
            continue
        for it in preds:
            for tree in it:
                if tree.nodes["is_categorical"].any():
                    raise ValidationError(
                        f"{type(m).__name__} uses categorical splits (categorical_features): "
                        "ONNX TreeEnsemble has no set-membership split in ai.onnx.ml opset 3; "
                        "one-hot or ordinal-encode the column in a pipeline instead",
                        field="model",
                    )


def _estimators(model: Any) -> Iterator[Any]:
    yield model
    for _, step in getattr(model, "steps", []) or []:
        yield from _estimators(step)
    for _, step, _cols in getattr(model, "transformers_", []) or []:
        yield from _estimators(step)


@contextmanager
def exact_trees() -> Iterator[None]:
    """While active, skl2onnx's tree helpers reproduce scikit-learn's routing exactly."""
    from skl2onnx.common import tree_ensemble as te
    from skl2onnx.operator_converters import (
        decision_tree,
        gradient_boosting,
        isolation_forest,
        random_forest,
    )

    orig_add_node = te.add_node

    def add_node(
        attr_pairs,
        is_classifier,
        tree_id,
        tree_weight,
        node_id,
        feature_id,
        mode,
        value,
        true_child_id,
        false_child_id,
        weights,
        weight_id_bias,
        leaf_weights_are_counts,
        adjust_threshold_for_sklearn,
        dtype,
        nodes_missing_value_tracks_true=0,
    ):
        if mode != "LEAF" and dtype != np.float64:
            value = floor32(float(value))
            adjust_threshold_for_sklearn = False
        orig_add_node(
            attr_pairs,
            is_classifier,
            tree_id,
            tree_weight,
            node_id,
            feature_id,
            mode,
            value,
            true_child_id,
            false_child_id,
            weights,
            weight_id_bias,
            leaf_weights_are_counts,
            adjust_threshold_for_sklearn,
            dtype,
            int(bool(nodes_missing_value_tracks_true)),
        )

    def add_tree(
        attr_pairs,
        is_classifier,
        tree,
        tree_id,
        tree_weight,
        weight_id_bias,
        leaf_weights_are_counts,
        adjust_threshold_for_sklearn=False,
        dtype=None,
    ):
        missing = getattr(tree, "missing_go_to_left", None)
        for i in range(tree.node_count):
            weight = tree.value[i]
            if tree.children_left[i] > i or tree.children_right[i] > i:
                args = (
                    "BRANCH_LEQ",
                    tree.threshold[i],
                    int(tree.children_left[i]),
                    int(tree.children_right[i]),
                    int(tree.feature[i]),
                    int(missing[i]) if missing is not None else 0,
                )
            else:
                args = ("LEAF", 0.0, 0, 0, 0, 0)
            mode, thr, left, right, feat, miss = args
            add_node(
                attr_pairs,
                is_classifier,
                tree_id,
                tree_weight,
                i,
                feat,
                mode,
                thr,
                left,
                right,
                weight,
                weight_id_bias,
                leaf_weights_are_counts,
                adjust_threshold_for_sklearn,
                dtype,
                miss,
            )

    def add_hist(
        attr_pairs,
        is_classifier,
        tree,
        tree_id,
        tree_weight,
        weight_id_bias,
        leaf_weights_are_counts,
        adjust_threshold_for_sklearn=False,
        dtype=None,
    ):
        for i, node in enumerate(tree.nodes):
            if node["is_leaf"]:
                add_node(
                    attr_pairs,
                    is_classifier,
                    tree_id,
                    tree_weight,
                    i,
                    0,
                    "LEAF",
                    0.0,
                    0,
                    0,
                    node["value"],
                    weight_id_bias,
                    leaf_weights_are_counts,
                    False,
                    dtype,
                    0,
                )
            else:
                add_node(
                    attr_pairs,
                    is_classifier,
                    tree_id,
                    tree_weight,
                    i,
                    int(node["feature_idx"]),
                    "BRANCH_LEQ",
                    float(node["num_threshold"]),
                    int(node["left"]),
                    int(node["right"]),
                    node["value"],
                    weight_id_bias,
                    leaf_weights_are_counts,
                    False,
                    dtype,
                    int(node["missing_go_to_left"]),
                )

    mods = (te, decision_tree, gradient_boosting, isolation_forest, random_forest)
    saved = [
        (m, name, getattr(m, name))
        for m in mods
        for name in (
            "add_node",
            "add_tree_to_attribute_pairs",
            "add_tree_to_attribute_pairs_hist_gradient_boosting",
        )
        if hasattr(m, name)
    ]
    repl = {
        "add_node": add_node,
        "add_tree_to_attribute_pairs": add_tree,
        "add_tree_to_attribute_pairs_hist_gradient_boosting": add_hist,
    }
    with _LOCK:
        for m, name, _ in saved:
            setattr(m, name, repl[name])
        try:
            yield
        finally:
            for m, name, fn in saved:
                setattr(m, name, fn)
