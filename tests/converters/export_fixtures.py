"""Real models trained on scikit-learn's bundled data, shared by the export/quantize/check/CLI tests.

Training is cached per process (``lru_cache``) so every test module that
imports these fixtures reuses the same fitted models.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest


@functools.lru_cache(maxsize=None)
def cancer_frame():
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df.columns = [c.replace(" ", "_") for c in df.columns]
    return df


@functools.lru_cache(maxsize=None)
def digits_xy():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float64), y


@functools.lru_cache(maxsize=None)
def trained(kind: str):
    """A fitted model by name: (model, X, y, feature names)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    df = cancer_frame()
    xc, yc = df.drop(columns="target"), df["target"].to_numpy()
    xd, yd = digits_xy()
    dnames = [f"px{i}" for i in range(64)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logreg":  # fitted on a DataFrame: has feature_names_in_
            m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xc, yc)
            return m, xc.to_numpy(), yc, list(xc.columns)
        if kind == "gboost":
            m = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)
            return m.fit(xc.to_numpy(), yc), xc.to_numpy(), yc, list(xc.columns)
        if kind == "mlp":
            m = make_pipeline(StandardScaler(),
                              MLPClassifier((32,), max_iter=300, random_state=0))
            return m.fit(xd, yd), xd, yd, dnames
        if kind == "lightgbm":
            import lightgbm

            m = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1, random_state=0)
            return m.fit(xc.to_numpy(), yc), xc.to_numpy(), yc, list(xc.columns)
        if kind == "xgboost":
            import xgboost

            m = xgboost.XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
            return m.fit(xd, yd), xd, yd, dnames
        if kind == "ridge":  # regression: mean radius from the other features
            x = xc.drop(columns="mean_radius")
            y = xc["mean_radius"].to_numpy()
            m = make_pipeline(StandardScaler(), Ridge()).fit(x.to_numpy(), y)
            return m, x.to_numpy(), y, list(x.columns)
        if kind == "weak":  # a deliberately poor digits model (few rows, few iterations)
            m = LogisticRegression(max_iter=5).fit(xd[:60], yd[:60])
            return m, xd, yd, dnames
    raise KeyError(kind)


def write_csv(path: Path, x: np.ndarray, names: list[str], y=None, label: str = "label") -> Path:
    import pyarrow as pa
    from pyarrow import csv

    cols = {n: x[:, i] for i, n in enumerate(names)}
    if y is not None:
        cols[label] = y
    csv.write_csv(pa.table(cols), path)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from edge_runtime.signing import generate_keypair

    d = tmp_path_factory.mktemp("convert-keys")
    return generate_keypair(d / "convert.key", d / "convert.pub")


@pytest.fixture(scope="session")
def public_key(keys):
    from edge_runtime.signing import load_public_key

    return load_public_key(keys[1])


@pytest.fixture(scope="session")
def mlp_bundle(tmp_path_factory, keys) -> Path:
    """The digits MLP exported once (FP32 source for quantize/check tests)."""
    from converters.export import ExportConfig, export_model

    m, x, y, names = trained("mlp")
    out = tmp_path_factory.mktemp("mlp") / "digits-mlp"
    return export_model(m, (x, y), out, ExportConfig(key=keys[0], name="digits-mlp",
                                                     feature_names=[f"px{i}" for i in range(64)]))


@pytest.fixture(scope="session")
def digits_csv(tmp_path_factory) -> Path:
    x, y = digits_xy()
    return write_csv(tmp_path_factory.mktemp("data") / "digits.csv", x,
                     [f"px{i}" for i in range(64)], y)
