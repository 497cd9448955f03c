# ruff: noqa: F811  (pytest fixtures imported from export_fixtures are parameters)
"""edge-convert CLI: every command's --help, the full tour, one-line errors, no partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from export_fixtures import digits_csv, keys, public_key, trained, write_csv  # noqa: F401

from converters.cli import build_parser, main
from edge_runtime.bundle import read_bundle, verify_bundle

COMMANDS = ["keygen", "export", "quantize", "tflite", "coreml", "check"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"edge-convert {command}" in out and "--" in out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out
    sub = build_parser()._subparsers._group_actions[0].choices
    assert sorted(sub) == sorted(COMMANDS)


def test_console_script_runs(tmp_path):
    """The installed entry point, in a real subprocess."""
    exe = Path(sys.executable).with_name("edge-convert")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "converters.cli"]
    res = subprocess.run(cmd + ["quantize", "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and "--mode {dynamic,static,fp16}" in res.stdout
    res = subprocess.run(cmd + ["export", str(tmp_path / "nope.joblib"), "--sample", "x.csv",
                                "--out", str(tmp_path / "o"), "--key", "k"],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "EDGE_CONVERT_KEY": ""})
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_keygen(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "fleet.key")]) == 0
    assert (tmp_path / "fleet.key").exists() and (tmp_path / "fleet.pub").exists()
    assert "key id" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "fleet.key")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path / "fleet.key"), "--force"]) == 0


def test_tour_export_quantize_check_pick(tmp_path, keys, public_key, digits_csv, capsys,
                                         monkeypatch):
    model, x, y, names = trained("mlp")
    joblib.dump(model, tmp_path / "digits.joblib")
    monkeypatch.setenv("EDGE_CONVERT_KEY", str(keys[0]))
    fp32, int8, f16 = tmp_path / "fp32", tmp_path / "int8", tmp_path / "fp16"

    assert main(["export", str(tmp_path / "digits.joblib"), "--sample", str(digits_csv),
                 "--label-column", "label", "--out", str(fp32), "--name", "digits",
                 "--version", "3.0.0"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "digits:3.0.0" in out and "label agreement 100.00%" in out
    m = read_bundle(fp32).manifest
    assert m.feature_names == names and m.task == "multiclass_classification"

    assert main(["quantize", str(fp32), "--out", str(int8), "--mode", "static", "--sample",
                 str(digits_csv), "--label-column", "label"]) == 0
    assert "quantization: static" in capsys.readouterr().out
    assert main(["quantize", str(fp32), "--out", str(f16), "--mode", "fp16",
                 "--key", str(keys[0])]) == 0
    capsys.readouterr()
    for b in (fp32, int8, f16):
        verify_bundle(b, public_key)

    assert main(["check", str(fp32), str(int8), str(f16), "--sample", str(digits_csv),
                 "--label-column", "label", "--json", "--runs", "20", "--batch-runs", "5",
                 "--public-key", str(keys[1])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["quantization"] for v in report["variants"]] == ["fp32", "static", "fp16"]
    assert all(v["signature"] == "verified" for v in report["variants"])
    assert report["variants"][1]["label_agreement"] > 0.95

    assert main(["check", str(fp32), str(int8), str(f16), "--sample", str(digits_csv),
                 "--label-column", "label", "--pick", "--profile", "x86-gateway",
                 "--max-accuracy-drop", "2", "--runs", "20", "--batch-runs", "5"]) == 0
    table = capsys.readouterr().out
    assert "pick: " in table and "x86-gateway" in table and "1-row p50/p99 ms" in table

    # nothing qualifies → exit 3 with the reason on stderr
    model_w, *_ = trained("weak")
    joblib.dump(model_w, tmp_path / "weak.joblib")
    assert main(["export", str(tmp_path / "weak.joblib"), "--sample", str(digits_csv),
                 "--label-column", "label", "--out", str(tmp_path / "weak")]) == 0
    capsys.readouterr()
    assert main(["check", str(fp32), str(tmp_path / "weak"), "--sample", str(digits_csv),
                 "--label-column", "label", "--pick", "--max-accuracy-drop", "0",
                 "--runs", "5", "--batch-runs", "2", "--model", str(tmp_path / "weak.joblib")
                 ]) in (0, 3)


def test_tflite_command(tmp_path, keys, public_key, digits_csv, capsys, monkeypatch):
    pytest.importorskip("converters.tflite")
    pytest.importorskip("ai_edge_litert")
    model, x, y, names = trained("mlp")
    joblib.dump(model, tmp_path / "m.joblib")
    monkeypatch.setenv("EDGE_CONVERT_KEY", str(keys[0]))
    assert main(["export", str(tmp_path / "m.joblib"), "--sample", str(digits_csv),
                 "--label-column", "label", "--out", str(tmp_path / "onnx")]) == 0
    assert main(["tflite", str(tmp_path / "onnx"), "--out", str(tmp_path / "lite"),
                 "--int8"]) == 0
    capsys.readouterr()
    verify_bundle(tmp_path / "lite", public_key)
    assert read_bundle(tmp_path / "lite").manifest.format == "tflite"
    assert main(["check", str(tmp_path / "onnx"), str(tmp_path / "lite"), "--sample",
                 str(digits_csv), "--label-column", "label", "--json", "--runs", "10",
                 "--batch-runs", "3"]) == 0
    rep = json.loads(capsys.readouterr().out)
    lite = rep["variants"][1]
    assert lite["format"] == "tflite" and lite["runnable"] and lite["label_agreement"] >= 0.995


def test_coreml_command(tmp_path, keys, public_key, digits_csv, capsys):
    pytest.importorskip("converters.coreml")
    pytest.importorskip("coremltools")
    model, *_ = trained("mlp")
    joblib.dump(model, tmp_path / "m.joblib")
    k = ["--key", str(keys[0])]
    assert main(["export", str(tmp_path / "m.joblib"), "--sample", str(digits_csv),
                 "--label-column", "label", "--out", str(tmp_path / "onnx")] + k) == 0
    assert main(["coreml", str(tmp_path / "onnx"), "--out", str(tmp_path / "cm"),
                 "--public-key", str(keys[1])] + k) == 0
    assert "numerical checks need macOS" in capsys.readouterr().out
    verify_bundle(tmp_path / "cm", public_key)
    assert main(["check", str(tmp_path / "onnx"), str(tmp_path / "cm"), "--sample",
                 str(digits_csv), "--label-column", "label", "--runs", "5",
                 "--batch-runs", "2"]) == 0
    assert "not runnable on Linux" in capsys.readouterr().out


def _run_error(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_errors_are_one_line_and_leave_nothing(tmp_path, keys, capsys, monkeypatch):
    monkeypatch.delenv("EDGE_CONVERT_KEY", raising=False)
    model, x, y, names = trained("logreg")
    joblib.dump(model, tmp_path / "m.joblib")
    good = write_csv(tmp_path / "good.csv", x, names, y)
    missing = write_csv(tmp_path / "missing.csv", x[:, 1:], names[1:], y)
    out = tmp_path / "out"

    err = _run_error(["export", str(tmp_path / "m.joblib"), "--sample", str(good),
                      "--label-column", "label", "--out", str(out)], capsys)
    assert "no signing key" in err and "EDGE_CONVERT_KEY" in err
    k = ["--key", str(keys[0])]
    err = _run_error(["export", str(tmp_path / "m.joblib"), "--sample", str(missing),
                      "--label-column", "label", "--out", str(out)] + k, capsys)
    assert names[0] in err and "missing" in err
    (tmp_path / "bad.joblib").write_bytes(b"garbage")
    err = _run_error(["export", str(tmp_path / "bad.joblib"), "--sample", str(good),
                      "--out", str(out)] + k, capsys)
    assert "bad.joblib" in err and ", field model)" in err
    assert err.startswith("edge-convert: error: ")
    err = _run_error(["export", str(tmp_path / "m.joblib"), "--sample",
                      str(tmp_path / "nope.csv"), "--out", str(out)] + k, capsys)
    assert "not found" in err
    assert not out.exists()

    assert main(["export", str(tmp_path / "m.joblib"), "--sample", str(good), "--label-column",
                 "label", "--out", str(out)] + k) == 0
    capsys.readouterr()
    err = _run_error(["quantize", str(out), "--out", str(tmp_path / "q"), "--mode", "static"]
                     + k, capsys)
    assert "calibration sample" in err
    err = _run_error(["quantize", str(out), "--out", str(tmp_path / "q")] + k, capsys)
    assert "nothing to quantize" in err  # a linear classifier is an ai.onnx.ml op
    err = _run_error(["check", str(tmp_path / "nope"), "--sample", str(good)], capsys)
    assert "not found" in err
    err = _run_error(["check", str(out), "--sample", str(good), "--profile", "toaster"], capsys)
    assert "toaster" in err
    assert not (tmp_path / "q").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "b", "--out", "o", "--mode", "int4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["export", "m.joblib", "--out", "o"])  # --sample is required
    assert exc.value.code == 2
    assert "--sample" in capsys.readouterr().err
