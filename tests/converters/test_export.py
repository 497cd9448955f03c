# ruff: noqa: F811  (pytest fixtures imported from export_fixtures are parameters)
"""export_model: real models → signed ONNX bundles that answer like the source model."""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pytest
from export_fixtures import cancer_frame, digits_xy, keys, public_key, trained, write_csv  # noqa: F401

from converters.export import ExportConfig, export_model
from edge_runtime.bundle import read_bundle, verify_bundle
from edge_runtime.errors import ValidationError
from edge_runtime.model import Model

CLASSIFIERS = ["logreg", "gboost", "mlp", "lightgbm", "xgboost"]


def _source_proba(model, x, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if getattr(model, "feature_names_in_", None) is not None:
            import pandas as pd

            x = pd.DataFrame(x, columns=names)
        return model.predict_proba(x)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_classifier_bundle_verifies_and_answers_like_the_model(kind, tmp_path, keys, public_key):
    model, x, y, names = trained(kind)
    sample = write_csv(tmp_path / "sample.csv", x, names, y, label="target")
    out = export_model(model, sample, tmp_path / "bundle",
                       ExportConfig(key=keys[0], name=f"{kind}-model", label_column="target"))

    report = verify_bundle(out, public_key)
    assert report.signed and report.ok
    m = read_bundle(out).manifest
    assert m.format == "onnx" and m.name == f"{kind}-model" and m.version == "1.0.0"
    assert m.feature_names == names
    n_classes = len(np.unique(y))
    assert m.task == ("binary_classification" if n_classes == 2 else "multiclass_classification")
    assert m.postprocess.classes == sorted(np.unique(y).tolist())
    assert {o.role for o in m.outputs} == {"label", "probabilities"}
    if n_classes == 2:
        assert m.postprocess.positive_class == 1
        assert [(r.name, r.min) for r in m.postprocess.risk_levels] == [
            ("high", 0.7), ("medium", 0.4), ("low", 0.0)]
    assert len(m.golden[0].rows) == 8 and m.golden[0].expected_label
    par = m.provenance["parity"]
    assert par["rows_by_set"] == {"sample": len(x), "heldout": 1000}
    assert par["label_agreement"] >= 0.99 and par["label_disagreements"] == 0
    assert par["max_abs_diff"] <= 1e-4 and par["heldout_max_abs_diff"] <= 1e-4
    assert m.provenance["sample_accuracy"] > 0.9

    loaded = Model.load(out)
    assert loaded.self_test() == 1
    rows = [dict(zip(names, map(float, r))) for r in x[:100].astype(np.float32)]
    got = loaded.predict(rows)
    want = _source_proba(model, x[:100].astype(np.float32).astype(np.float64), names)
    if n_classes == 2:
        np.testing.assert_allclose([g["probability"] for g in got], want[:, 1], atol=1e-4)
        assert all(g["risk_level"] in {"high", "medium", "low"} for g in got)
    else:
        np.testing.assert_allclose([g["probabilities"] for g in got], want, atol=1e-4)
    agree = np.mean([g["label"] == c for g, c in zip(got, model.classes_[want.argmax(axis=1)])])
    assert agree >= 0.99


def test_regressor_bundle(tmp_path, keys, public_key):
    model, x, y, names = trained("ridge")
    out = export_model(model, (x, y), tmp_path / "reg",
                       ExportConfig(key=keys[0], name="radius", feature_names=names))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.task == "regression" and [o.role for o in m.outputs] == ["value"]
    assert m.postprocess.classes == [] and m.golden[0].expected_value
    loaded = Model.load(out)
    loaded.self_test()
    got = [r["value"] for r in loaded.predict([dict(zip(names, map(float, r))) for r in x[:50]])]
    np.testing.assert_allclose(got, model.predict(x[:50].astype(np.float32)), rtol=1e-4, atol=1e-3)


def test_export_from_joblib_file_with_parquet_sample(tmp_path, keys, public_key):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, x, y, names = trained("gboost")
    path = tmp_path / "churn-model.joblib"
    joblib.dump(model, path)
    table = pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "target": y})
    pq.write_table(table, tmp_path / "sample.parquet")
    out = export_model(path, tmp_path / "sample.parquet", tmp_path / "out",
                       ExportConfig(key=keys[0], label_column="target", version="2.1.0"))
    m = read_bundle(out).manifest
    assert m.name == "churn-model" and m.version == "2.1.0"  # name from the file
    assert m.provenance["source"] == "churn-model"
    assert m.provenance["sample"] == "sample.parquet"
    verify_bundle(out, public_key)


def test_pickle_file_and_feature_names_from_model(tmp_path, keys):
    """A model fitted on a DataFrame: the contract follows feature_names_in_, whatever
    the order of the sample's columns, and extra columns are ignored."""
    model, x, y, names = trained("logreg")
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    shuffled = list(reversed(names)) + ["customer_id"]
    cols = np.column_stack([x[:, ::-1], np.arange(len(x))])
    sample = write_csv(tmp_path / "s.csv", cols, shuffled, y, label="churned")
    out = export_model(path, sample, tmp_path / "b",
                       ExportConfig(key=keys[0], label_column="churned", record_ranges=True))
    m = read_bundle(out).manifest
    assert m.feature_names == names
    f0 = m.inputs.features[0]
    assert f0.min == pytest.approx(x[:, 0].min()) and f0.max == pytest.approx(x[:, 0].max())
    Model.load(out).self_test()


def test_class_names_positive_class_threshold(tmp_path, keys):
    model, x, y, names = trained("gboost")
    out = export_model(model, (x, y), tmp_path / "b", ExportConfig(
        key=keys[0], name="cancer", feature_names=names, class_names=["malignant", "benign"],
        positive_class="malignant", threshold=0.3, risk_levels=None))
    m = read_bundle(out).manifest
    assert m.postprocess.classes == ["malignant", "benign"]
    assert m.postprocess.positive_class == "malignant" and m.postprocess.threshold == 0.3
    assert m.postprocess.risk_levels == []
    loaded = Model.load(out)
    loaded.self_test()
    p0 = model.predict_proba(x[:20].astype(np.float32))[:, 0]
    got = loaded.predict([dict(zip(names, map(float, r))) for r in x[:20]])
    np.testing.assert_allclose([g["probability"] for g in got], p0, atol=1e-4)
    assert [g["label"] for g in got] == ["malignant" if p >= 0.3 else "benign" for p in p0]


def test_integer_feature_dtype_recorded(tmp_path, keys):
    model, x, y, names = trained("xgboost")  # digits pixels are integers
    sample = write_csv(tmp_path / "d.csv", x.astype(np.int64), names, y)
    out = export_model(model, sample, tmp_path / "b",
                       ExportConfig(key=keys[0], label_column="label", feature_names=names))
    m = read_bundle(out).manifest
    assert {f.dtype for f in m.inputs.features} == {"int64"}
    assert all(isinstance(v, int) for v in m.golden[0].rows[0].values())
    Model.load(out).self_test()


def test_torch_module(tmp_path, keys, public_key):
    torch = pytest.importorskip("torch")
    x, y = digits_xy()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    out = export_model(net, (x / 16.0, y), tmp_path / "torch", ExportConfig(key=keys[0],
                       name="digits-torch"))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.task == "multiclass_classification" and m.outputs[0].role == "logits"
    loaded = Model.load(out)
    loaded.self_test()
    with torch.no_grad():
        want = torch.softmax(net(xt[:50]), dim=1).numpy()
    got = loaded.score_array((x[:50] / 16.0).astype(np.float32)).probabilities
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert m.provenance["sample_accuracy"] > 0.9
    # the same module saved whole with torch.save, exported from the file
    torch.save(net, tmp_path / "digits.pt")
    out2 = export_model(tmp_path / "digits.pt", (x / 16.0, y), tmp_path / "torch-file",
                        ExportConfig(key=keys[0]))
    assert read_bundle(out2).manifest.name == "digits"
    Model.load(out2).self_test()


# ---- bad input: clear errors, nothing left behind ------------------------------------

def test_corrupt_model_file(tmp_path, keys):
    bad = tmp_path / "model.joblib"
    bad.write_bytes(b"\x80\x04this is not a pickle at all")
    x, y = digits_xy()
    with pytest.raises(ValidationError) as exc:
        export_model(bad, (x, y), tmp_path / "out", ExportConfig(key=keys[0]))
    assert exc.value.field == "model" and "model.joblib" in exc.value.message
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temp directories either


def test_truncated_model_file(tmp_path, keys):
    model, x, y, names = trained("gboost")
    path = tmp_path / "m.joblib"
    joblib.dump(model, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValidationError, match="not a valid joblib/pickle file"):
        export_model(path, (x, y), tmp_path / "out", ExportConfig(key=keys[0]))
    assert not (tmp_path / "out").exists()


def test_sample_missing_columns(tmp_path, keys):
    model, x, y, names = trained("logreg")
    sample = write_csv(tmp_path / "s.csv", x[:, :-2], names[:-2], y)
    with pytest.raises(ValidationError) as exc:
        export_model(model, sample, tmp_path / "out", ExportConfig(key=keys[0],
                                                                   label_column="label"))
    assert names[-1] in exc.value.message and names[-2] in exc.value.message
    assert exc.value.field == f"sample.{names[-2]}"
    assert not (tmp_path / "out").exists()


def test_sample_wrong_dtype(tmp_path, keys):
    model, x, y, names = trained("logreg")
    path = tmp_path / "s.csv"
    write_csv(path, x, names, y)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    col = header.index(f'"{names[3]}"') if f'"{names[3]}"' in header else header.index(names[3])
    lines = [text[0]]
    for i, line in enumerate(text[1:]):
        cells = line.split(",")
        cells[col] = "high" if i % 2 else "low"
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as exc:
        export_model(model, path, tmp_path / "out", ExportConfig(key=keys[0],
                                                                 label_column="label"))
    assert exc.value.field == f"sample.{names[3]}" and "numeric" in exc.value.message
    assert not (tmp_path / "out").exists()


def test_label_left_in_sample_is_explained(tmp_path, keys):
    model, x, y, names = trained("gboost")
    sample = write_csv(tmp_path / "s.csv", x, names, y)
    with pytest.raises(ValidationError, match="--label-column"):
        export_model(model, sample, tmp_path / "out", ExportConfig(key=keys[0]))


def test_unreadable_sample_and_unknown_label(tmp_path, keys):
    model, x, y, names = trained("gboost")
    (tmp_path / "s.csv").write_text("")
    with pytest.raises(ValidationError) as exc:
        export_model(model, tmp_path / "s.csv", tmp_path / "out", ExportConfig(key=keys[0]))
    assert exc.value.field == "sample"
    sample = write_csv(tmp_path / "ok.csv", x, names, y)
    with pytest.raises(ValidationError) as exc:
        export_model(model, sample, tmp_path / "out", ExportConfig(key=keys[0],
                                                                   label_column="nope"))
    assert exc.value.field == "label_column"
    assert not (tmp_path / "out").exists()


def test_refusals_before_any_work(tmp_path, keys, monkeypatch):
    model, x, y, names = trained("gboost")
    monkeypatch.delenv("EDGE_CONVERT_KEY", raising=False)
    with pytest.raises(ValidationError, match="no signing key"):
        export_model(model, (x, y), tmp_path / "out")
    with pytest.raises(ValidationError, match="version"):
        export_model(model, (x, y), tmp_path / "out", ExportConfig(key=keys[0], version="1 0"))
    with pytest.raises(ValidationError, match="task"):
        export_model(model, (x, y), tmp_path / "out", ExportConfig(key=keys[0], task="ranking"))
    with pytest.raises(ValidationError, match="does not match"):
        export_model(model, (x, y), tmp_path / "out", ExportConfig(key=keys[0],
                                                                   task="regression"))
    assert not (tmp_path / "out").exists()
    # an existing non-bundle directory is never clobbered
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ValidationError, match="not a bundle"):
        export_model(model, (x, y), tmp_path / "home", ExportConfig(key=keys[0]))
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def test_existing_bundle_needs_overwrite(tmp_path, keys, monkeypatch):
    model, x, y, names = trained("gboost")
    monkeypatch.setenv("EDGE_CONVERT_KEY", str(keys[0]))  # key from the environment
    out = export_model(model, (x, y), tmp_path / "b", ExportConfig(feature_names=names))
    with pytest.raises(ValidationError, match="--force"):
        export_model(model, (x, y), out, ExportConfig(feature_names=names))
    again = export_model(model, (x, y), out, ExportConfig(feature_names=names, version="1.0.1",
                                                          overwrite=True))
    assert read_bundle(again).manifest.version == "1.0.1"


def test_unfitted_and_unsupported_models(tmp_path, keys):
    from sklearn.linear_model import LogisticRegression

    x, y = digits_xy()
    with pytest.raises(ValidationError, match="not fitted"):
        export_model(LogisticRegression(), (x, y), tmp_path / "o", ExportConfig(key=keys[0]))
    with pytest.raises(ValidationError, match="cannot export"):
        export_model({"not": "a model"}, (x, y), tmp_path / "o", ExportConfig(key=keys[0]))
    assert not (tmp_path / "o").exists()



def test_dataframe_sample_for_the_demo_path(tmp_path, keys, public_key):
    """Train → bundle in two lines: a DataFrame with its label column, or (DataFrame, y)."""
    model, x, y, names = trained("logreg")
    frame = cancer_frame()
    out = export_model(model, frame, tmp_path / "a",
                       ExportConfig(key=keys[0], name="cancer", label_column="target"))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.feature_names == names and m.provenance["sample_accuracy"] > 0.95
    out2 = export_model(model, (frame.drop(columns="target"), frame["target"]), tmp_path / "b",
                        ExportConfig(key=keys[0], name="cancer"))
    assert read_bundle(out2).manifest.feature_names == names
    Model.load(out2).self_test()


@pytest.mark.parametrize("kind", ["lgbm_regressor", "xgb_regressor", "lgbm_in_pipeline",
                                  "xgb_classifier_dataframe"])
def test_boosters_fitted_on_dataframes(kind, tmp_path, keys, public_key):
    """LightGBM/XGBoost fitted on named columns, alone or inside a pipeline (the XGBoost
    converter needs f0…fn names: export converts a renamed copy, the user's model is untouched)."""
    import lightgbm
    import xgboost
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = cancer_frame()
    x = frame.drop(columns=["target", "mean_radius"])
    regression = kind.endswith("regressor")
    y = frame["mean_radius"] if regression else frame["target"]
    model = {"lgbm_regressor": lambda: lightgbm.LGBMRegressor(n_estimators=10, verbose=-1),
             "xgb_regressor": lambda: xgboost.XGBRegressor(n_estimators=10, max_depth=3),
             "lgbm_in_pipeline": lambda: make_pipeline(
                 StandardScaler(), lightgbm.LGBMClassifier(n_estimators=10, verbose=-1)),
             "xgb_classifier_dataframe": lambda: xgboost.XGBClassifier(n_estimators=10,
                                                                       max_depth=3)}[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    out = export_model(model, x.assign(outcome=y), tmp_path / "b",
                       ExportConfig(key=keys[0], name=kind, label_column="outcome"))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.feature_names == list(x.columns)
    assert m.task == ("regression" if regression else "binary_classification")
    loaded = Model.load(out)
    loaded.self_test()
    got = loaded.score_array(x.to_numpy(np.float32)[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xin = x.iloc[:100].astype(np.float32)
        if regression:
            np.testing.assert_allclose(got.value, model.predict(xin), rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_allclose(got.probabilities, model.predict_proba(xin), atol=1e-4)
    if kind.startswith("xgb"):
        booster = model.get_booster()
        assert booster.feature_names == list(x.columns)  # the user's model kept its names


def test_onnx_file_made_elsewhere(tmp_path, keys, public_key):
    """An .onnx file from another exporter: skl2onnx-style heads are recognised, a bare
    logits output needs --task, and the bundle answers like the file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx

    model, x, y, names = trained("mlp")
    onx = to_onnx(model, x[:1].astype(np.float32), options={"zipmap": False}, target_opset=17)
    onnx.save(onx, str(tmp_path / "mlp.onnx"))
    out = export_model(tmp_path / "mlp.onnx", (x, y), tmp_path / "a",
                       ExportConfig(key=keys[0], feature_names=names))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.name == "mlp" and m.task == "multiclass_classification"
    assert m.postprocess.classes == list(range(10)) and m.provenance["sample_accuracy"] > 0.95
    Model.load(out).self_test()

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["scores"])], "lin",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3])],
                          [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "lin.onnx"))
    with pytest.raises(ValidationError, match="--task") as exc:
        export_model(tmp_path / "lin.onnx", x, tmp_path / "b", ExportConfig(key=keys[0]))
    assert exc.value.field == "task"
    out = export_model(tmp_path / "lin.onnx", x, tmp_path / "b",
                       ExportConfig(key=keys[0], task="multiclass", class_names=["a", "b", "c"]))
    m = read_bundle(out).manifest
    assert m.outputs[0].role == "logits" and m.postprocess.classes == ["a", "b", "c"]
    got = Model.load(out).score_array(x[:20].astype(np.float32)).probabilities
    z = x[:20].astype(np.float32) @ numpy_helper.to_array(w)
    want = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(axis=1, keepdims=True), atol=1e-5)

    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValidationError, match="not a valid ONNX model"):
        export_model(tmp_path / "broken.onnx", x, tmp_path / "c", ExportConfig(key=keys[0]))
    assert not (tmp_path / "c").exists()


def test_onnx_file_with_one_logit_column_is_a_binary_classifier(tmp_path, keys, public_key):
    """A binary head with one logit per row (BCE-with-logits style): with --task binary it is
    scored with a sigmoid, not a softmax over one column (which is always 1.0), and the
    bundle's golden vectors and parity agree with the file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    frame = cancer_frame()
    x = frame.drop(columns=["target"]).to_numpy(dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(30, 1)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logit"])], "lin1",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 30])],
                          [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [None, 1])],
                          [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "lin1.onnx"))

    # without --task a single column stays a value (regression), as before
    m = read_bundle(export_model(tmp_path / "lin1.onnx", x, tmp_path / "r",
                                 ExportConfig(key=keys[0]))).manifest
    assert m.task == "regression" and m.outputs[0].role == "value"

    out = export_model(tmp_path / "lin1.onnx", x, tmp_path / "b",
                       ExportConfig(key=keys[0], task="binary", class_names=["benign", "malignant"]))
    verify_bundle(out, public_key)
    m = read_bundle(out).manifest
    assert m.task == "binary_classification" and m.outputs[0].role == "logits"
    assert m.postprocess.classes == ["benign", "malignant"]
    assert m.postprocess.positive_class == "malignant"
    assert m.provenance["parity"]["label_agreement"] == 1.0
    z = (x.astype(np.float32) @ numpy_helper.to_array(w)).astype(np.float64)[:, 0]
    want = 1.0 / (1.0 + np.exp(-z))
    golden = m.golden[0]
    assert 0.0 < min(golden.expected_probability) < 0.5 < max(golden.expected_probability) < 1.0
    model = Model.load(out)
    model.self_test()
    got = model.score_array(x.astype(np.float32))
    np.testing.assert_allclose(got.probabilities[:, 1], want, atol=1e-5)
    assert 0 < (got.label_index == 1).sum() < len(x)  # both classes predicted, not always 1.0
    model.close()


def test_missing_values_allowed_where_the_sample_has_them(tmp_path, keys):
    """A pipeline that imputes NaN: columns with gaps get nan=allow, the others keep
    rejecting NaN, and golden rows are complete rows."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = cancer_frame().copy()
    rng = np.random.default_rng(0)
    holes = rng.random(len(frame)) < 0.2
    frame.loc[holes, "mean_texture"] = np.nan
    x, y = frame.drop(columns="target"), frame["target"]
    model = make_pipeline(SimpleImputer(), StandardScaler(),
                          LogisticRegression(max_iter=500)).fit(x, y)
    sample = write_csv(tmp_path / "s.csv", frame.to_numpy(), list(frame.columns))
    out = export_model(model, sample, tmp_path / "b",
                       ExportConfig(key=keys[0], label_column="target"))
    m = read_bundle(out).manifest
    nan = {f.name: f.nan for f in m.inputs.features}
    assert nan["mean_texture"] == "allow" and nan["mean_area"] == "reject"
    assert all(r["mean_texture"] == r["mean_texture"] for r in m.golden[0].rows)  # no NaN
    loaded = Model.load(out)
    loaded.self_test()
    row = {c: float(v) for c, v in x.iloc[int(np.flatnonzero(holes)[0])].items()
           if c != "mean_texture"}
    row["mean_texture"] = None
    got = loaded.predict(row)[0]["probability"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = model.predict_proba(x.iloc[[int(np.flatnonzero(holes)[0])]]
                                   .astype(np.float32))[0, 1]
    assert abs(got - want) < 1e-4
