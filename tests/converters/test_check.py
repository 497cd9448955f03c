# ruff: noqa: F811  (pytest fixtures imported from export_fixtures are parameters)
"""check_bundles: measured parity, accuracy, size and latency per variant; the pick."""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_fixtures import digits_csv, digits_xy, keys, mlp_bundle, public_key, trained  # noqa: F401

from converters.check import CheckConfig, check_bundles
from converters.export import ExportConfig, export_model
from converters.quantize import QuantizeConfig, quantize_bundle
from edge_runtime.bundle import read_bundle, write_bundle
from edge_runtime.errors import NotFoundError, ValidationError

FAST = {"single_runs": 20, "batch_runs": 5}


@pytest.fixture(scope="module")
def variants(tmp_path_factory, mlp_bundle, keys):
    d = tmp_path_factory.mktemp("variants")
    dyn = quantize_bundle(mlp_bundle, d / "dynamic", QuantizeConfig(mode="dynamic", key=keys[0]))
    f16 = quantize_bundle(mlp_bundle, d / "fp16", QuantizeConfig(mode="fp16", key=keys[0]))
    model, x, y, names = trained("weak")
    weak = export_model(model, (x, y), d / "weak", ExportConfig(
        key=keys[0], name="digits-weak", feature_names=[f"px{i}" for i in range(64)]))
    return {"dynamic": dyn, "fp16": f16, "weak": weak}


def test_report_measures_every_variant(mlp_bundle, variants, digits_csv, keys):
    bundles = [mlp_bundle, variants["dynamic"], variants["fp16"], variants["weak"]]
    r = check_bundles(bundles, digits_csv, CheckConfig(label_column="label", public_key=keys[1],
                                                       **FAST))
    assert r.rows == 1797 and r.labelled and r.threads == 1 and r.batch_size == 64
    assert [v.path for v in r.variants] == [str(b) for b in bundles]
    ref, dyn, f16, weak = r.variants
    assert ref.max_abs_diff == 0 and ref.label_agreement == 1 and ref.accuracy_drop == 0
    assert [v.quantization for v in r.variants] == ["fp32", "dynamic", "fp16", "fp32"]
    for v in r.variants:
        assert v.runnable and v.signature == "verified" and v.golden == "passed (1)"
        files = read_bundle(v.path).manifest.files.values()
        assert v.size_bytes == sum(e.size for e in files)
        assert 0 < v.single.p50_ms <= v.single.p99_ms and v.single.runs == 20
        assert 0 < v.batch.p50_ms <= v.batch.p99_ms and v.batch.runs == 5
    # measured against real labels: the digits MLP is accurate, the weak model is not
    assert ref.accuracy > 0.95
    assert dyn.label_agreement >= 0.98 and abs(dyn.accuracy_drop) < 2
    assert f16.max_abs_diff < 0.005 and f16.label_agreement >= 0.99
    assert weak.accuracy_drop > 5 and weak.label_agreement < 0.95
    assert dyn.size_bytes < ref.size_bytes
    # report as JSON and as a table
    data = json.loads(json.dumps(r.to_dict()))
    assert data["variants"][1]["quantization"] == "dynamic"
    table = r.to_table()
    assert "digits-mlp:1.0.0+dynamic" in table and "b64 p50/p99 ms" in table


def test_pick_fastest_within_tolerance(mlp_bundle, variants, digits_csv):
    bundles = [mlp_bundle, variants["dynamic"], variants["fp16"], variants["weak"]]
    r = check_bundles(bundles, digits_csv, CheckConfig(
        label_column="label", pick=True, profile="x86-gateway", max_accuracy_drop=1.0, **FAST))
    assert r.threads == 2 and r.profile["name"] == "x86-gateway"
    pool = [v for v in r.variants if v.path in r.pick.candidates]
    assert str(variants["weak"]) not in r.pick.candidates  # too inaccurate
    assert all(v.accuracy_drop <= 1.0 and v.format == "onnx" for v in pool)
    best = min(pool, key=lambda v: v.single.p50_ms)
    assert r.pick.chosen == best.path and "fastest 1-row p50" in r.pick.reason
    # by batch latency instead
    r2 = check_bundles(bundles, digits_csv, CheckConfig(
        label_column="label", pick=True, max_accuracy_drop=1.0, pick_by="batch", **FAST))
    pool2 = [v for v in r2.variants if v.path in r2.pick.candidates]
    assert r2.pick.chosen == min(pool2, key=lambda v: v.batch.p50_ms).path


def test_pick_nothing_within_tolerance(variants, digits_csv, mlp_bundle):
    r = check_bundles([variants["weak"], mlp_bundle], digits_csv, CheckConfig(
        label_column="label", pick=True, max_accuracy_drop=0.0, **FAST))
    # the weak model is the reference here; the MLP is *better* (negative drop) and qualifies
    assert r.variants[1].accuracy_drop < 0
    assert r.pick.chosen in (str(variants["weak"]), str(mlp_bundle))
    r = check_bundles([mlp_bundle, variants["weak"]], digits_csv, CheckConfig(
        label_column="label", pick=True, max_accuracy_drop=0.0, **FAST))
    assert r.pick.chosen == str(mlp_bundle)


def test_source_model_as_reference_and_unlabelled_sample(mlp_bundle, variants):
    model, x, y, names = trained("mlp")
    r = check_bundles([mlp_bundle, variants["dynamic"]], x, CheckConfig(source_model=model,
                                                                         **FAST))
    assert r.reference == "Pipeline" and not r.labelled
    assert r.variants[0].max_abs_diff < 1e-4 and r.variants[0].label_agreement == 1
    assert r.variants[0].accuracy is None
    # without labels the drop is the disagreement with the reference, in points
    dyn = r.variants[1]
    assert dyn.accuracy_drop == pytest.approx((1 - dyn.label_agreement) * 100, abs=1e-3)


def test_coreml_listed_as_not_runnable(tmp_path, mlp_bundle, digits_csv, keys):
    src = read_bundle(mlp_bundle).manifest
    try:  # the real Core ML converter (converters.coreml + coremltools) when installed
        from converters.coreml import CoreMLConfig, onnx_to_coreml

        coreml = onnx_to_coreml(mlp_bundle, tmp_path / "coreml", CoreMLConfig(key=keys[0]))
    except ImportError:
        # without coremltools: a Core ML bundle as the converter lays it out
        draft = src.model_dump(mode="json", exclude_none=True)
        for k in ("signature", "files", "created_at"):
            draft.pop(k)
        draft.update(format="coreml", model_file="model.mlpackage/Manifest.json")
        coreml = write_bundle(tmp_path / "coreml", draft,
                              {"model.mlpackage/Manifest.json": b"{}"}, key=keys[0]).root
    assert read_bundle(coreml).manifest.format == "coreml"
    r = check_bundles([mlp_bundle, coreml], digits_csv, CheckConfig(label_column="label",
                                                                    pick=True, **FAST))
    cm = r.variants[1]
    assert cm.format == "coreml" and not cm.runnable and cm.single is None
    assert "not runnable on Linux" in cm.note and "macOS" in cm.note
    assert r.pick.chosen == str(mlp_bundle)
    assert "not runnable on Linux" in r.to_table()


def test_tampered_variant_is_reported_not_run(tmp_path, mlp_bundle, variants, digits_csv, keys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(variants["dynamic"], bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-3] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(data))
    r = check_bundles([mlp_bundle, bad], digits_csv, CheckConfig(label_column="label",
                                                                 public_key=keys[1], **FAST))
    assert not r.variants[1].runnable and r.variants[1].signature.startswith("bad")
    assert "sha256" in r.variants[1].note


def test_bad_inputs(tmp_path, mlp_bundle, digits_csv):
    with pytest.raises(ValidationError):
        check_bundles([], digits_csv)
    with pytest.raises(NotFoundError) as exc:
        check_bundles([mlp_bundle], digits_csv, CheckConfig(profile="toaster"))
    assert exc.value.field == "profile"
    x, _ = digits_xy()
    with pytest.raises(ValidationError) as exc:
        check_bundles([mlp_bundle], np.asarray(x[:, :5]), CheckConfig(**FAST))
    assert exc.value.field.startswith("sample")
    with pytest.raises(ValidationError, match="label column"):
        check_bundles([mlp_bundle], digits_csv, CheckConfig(label_column="digit", **FAST))


def test_npy_and_parquet_samples(tmp_path, mlp_bundle):
    """A bare 2-D .npy holds the features in contract order; Parquet works like CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits_xy()
    np.save(tmp_path / "x.npy", x)
    r = check_bundles([mlp_bundle], tmp_path / "x.npy", CheckConfig(**FAST))
    assert r.rows == len(x) and not r.labelled
    names = [f"px{i}" for i in range(64)]
    pq.write_table(pa.table({**{n: x[:, i] for i, n in enumerate(reversed(names))},
                             "digit": y}), tmp_path / "d.parquet")
    # columns in another order than the contract: selected by name
    r2 = check_bundles([mlp_bundle], tmp_path / "d.parquet",
                       CheckConfig(label_column="digit", **FAST))
    assert r2.labelled and r2.variants[0].accuracy < 0.5  # reversed pixels: a different image
    pq.write_table(pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "digit": y}),
                   tmp_path / "ok.parquet")
    r3 = check_bundles([mlp_bundle], tmp_path / "ok.parquet",
                       CheckConfig(label_column="digit", **FAST))
    assert r3.variants[0].accuracy > 0.95


def test_pick_respects_profile_budgets_and_preferred_format(tmp_path, mlp_bundle, variants,
                                                            digits_csv, keys):
    tiny = tmp_path / "tiny-box.toml"
    tiny.write_text('name = "tiny-box"\nthreads = 1\nmemory_budget_mb = 0\n'
                    'latency_budget_ms = 50\npreferred_format = "onnx"\n')
    r = check_bundles([mlp_bundle, variants["dynamic"]], digits_csv, CheckConfig(
        label_column="label", pick=True, profile=str(tiny), **FAST))
    assert all(v.within_budget is False for v in r.variants)  # nothing fits in 0 MB
    assert r.pick.chosen is None and "budgets" in r.pick.reason
    pytest.importorskip("ai_edge_litert")
    from converters.tflite import TFLiteConfig, onnx_to_tflite

    lite = onnx_to_tflite(mlp_bundle, tmp_path / "lite", TFLiteConfig(key=keys[0]))
    r = check_bundles([mlp_bundle, variants["dynamic"], lite], digits_csv, CheckConfig(
        label_column="label", pick=True, profile="rpi4", max_accuracy_drop=1.0, **FAST))
    assert r.variants[2].format == "tflite" and r.variants[2].label_agreement >= 0.995
    assert r.pick.chosen == str(lite) and "preferred format" in r.pick.reason
