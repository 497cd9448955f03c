"""edge-runtime CLI: every command's --help, predict/bundle/keygen/store/bench in-process,
serve and run as real subprocesses on free ports."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edge_runtime.cli import build_parser, main

COMMANDS = [["predict"], ["serve"], ["run"], ["bench"], ["bundle"], ["bundle", "inspect"],
            ["bundle", "verify"], ["bundle", "sign"], ["keygen"], ["store"], ["store", "status"],
            ["store", "install"], ["store", "rollback"], ["store", "promote"], ["store", "remove"],
            ["install-service"]]


@pytest.mark.parametrize("cmd", [[]] + COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        main(cmd + ["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: edge-runtime") and len(out) > 80


def _parsers(ap, path=()):
    yield path, ap
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{' '.join(path + (name,))} has no one-line help"
                yield from _parsers(sub, path + (name,))


def test_every_option_and_command_is_documented():
    seen = 0
    for path, p in _parsers(build_parser()):
        assert p.description, f"edge-runtime {' '.join(path)} has no description"
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"edge-runtime {' '.join(path)}: {action.dest} has no help text"
            seen += 1
    assert seen > 30


def test_all_subcommands_are_listed():
    ap = build_parser()
    names = set(ap._subparsers._group_actions[0].choices)
    assert names == {"predict", "serve", "run", "bench", "bundle", "keygen", "store",
                     "install-service"}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_model_and_predictions(capsys, cancer_bundle, rows, tmp_path, keypair):
    code, out, err = run_cli(capsys, "predict", "--bundle", cancer_bundle, "--input",
                             json.dumps({"rows": rows[:2]}), "--public-key", keypair[1])
    assert code == 0, err
    body = json.loads(out)
    assert body["model"]["name"] == "cancer" and len(body["model"]["sha256"]) == 64
    assert len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"probability", "label", "risk_level"}
    f = tmp_path / "rows.json"
    f.write_text(json.dumps(rows[0]))
    for ref in (f"@{f}", str(f)):
        code, out, _ = run_cli(capsys, "predict", "--bundle", cancer_bundle, "--input", ref)
        assert code == 0 and json.loads(out)["predictions"] == body["predictions"][:1]


@pytest.mark.parametrize("argv,needle", [
    (["--input", "{bad"], "--input is not valid JSON"),
    (["--input", "@/nonexistent.json"], "cannot read input file /nonexistent.json"),
    (["--input", '{"rows": [{"mean_radius": 1}]}'], "rows[0]: missing feature(s) mean_texture"),
    (["--input", '{"rows": []}'], "rows is empty"),
])
def test_predict_errors_are_one_line(capsys, cancer_bundle, argv, needle):
    code, out, err = run_cli(capsys, "predict", "--bundle", cancer_bundle, *argv)
    assert code == 1 and out == ""
    assert err.startswith("edge-runtime: error: ") and needle in err and err.count("\n") == 1


def test_predict_refuses_a_bad_signature(capsys, cancer_bundle, other_keypair, tmp_path):
    code, _, err = run_cli(capsys, "predict", "--bundle", cancer_bundle, "--input", "{}",
                           "--public-key", other_keypair[1])
    assert code == 1 and "bad signature" in err
    code, _, err = run_cli(capsys, "predict", "--bundle", tmp_path / "nope", "--input", "{}")
    assert code == 1 and "bundle not found" in err


def test_keygen_sign_verify_inspect(capsys, cancer_bundle, tmp_path, keypair):
    code, out, _ = run_cli(capsys, "keygen", "--out", tmp_path / "k.key")
    assert code == 0 and "key id" in out
    assert oct((tmp_path / "k.key").stat().st_mode & 0o777) == "0o600"
    code, _, err = run_cli(capsys, "keygen", "--out", tmp_path / "k.key")
    assert code == 1 and "exists" in err
    b = tmp_path / "b"
    shutil.copytree(cancer_bundle, b)
    code, _, err = run_cli(capsys, "bundle", "verify", b, "--public-key", tmp_path / "k.pub")
    assert code == 1 and "bad signature" in err
    code, out, _ = run_cli(capsys, "bundle", "sign", b, "--key", tmp_path / "k.key")
    assert code == 0 and "signed cancer 1.0.0" in out
    code, out, _ = run_cli(capsys, "bundle", "verify", b, "--public-key", tmp_path / "k.pub")
    assert code == 0 and out.startswith("ok: cancer 1.0.0")
    code, _, err = run_cli(capsys, "bundle", "verify", b)
    assert code == 1 and "--public-key" in err
    code, out, _ = run_cli(capsys, "bundle", "inspect", b)
    assert code == 0 and "features:  30" in out and "risk:      high>=0.7" in out
    code, out, _ = run_cli(capsys, "bundle", "inspect", b, "--json")
    assert json.loads(out)["name"] == "cancer"
    (b / "model.onnx").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "bundle", "verify", b, "--allow-unsigned")
    assert code == 1 and "model.onnx has size 7" in err


def test_bench_prints_both_paths(capsys, cancer_bundle):
    code, out, _ = run_cli(capsys, "bench", "--bundle", cancer_bundle, "--runs", "200",
                           "--batch", "8", "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r["single_row"]) == {"raw_session_run", "in_process_predict"}
    assert r["single_row"]["in_process_predict"]["n"] == 200 and r["ratio_single_p50"] > 0
    assert r["batch_size"] == 8 and set(r["batch"]) == {"raw_session_run", "in_process_predict"}
    for bad, why in (("0", "must be at least 1, got 0"), ("x", "expected a whole number")):
        with pytest.raises(SystemExit) as ei:
            main(["bench", "--bundle", str(cancer_bundle), "--batch", bad])
        assert ei.value.code == 2 and f"argument --batch: {why}" in capsys.readouterr().err


def _device_toml(tmp_path, keypair, port=0):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f"""
[device]
id = "dev-cli"
profile = "x86-gateway"

[store]
dir = "./edge-data"
public_key = "{keypair[1]}"
latency_runs = 20

[local_api]
host = "127.0.0.1"
port = {port}
""")
    return cfg


def test_store_commands(capsys, tmp_path, keypair, cancer_bundle, cancer_bundle_v2):
    cfg = _device_toml(tmp_path, keypair)
    code, out, _ = run_cli(capsys, "store", "install", cancer_bundle, "--config", cfg)
    assert code == 0 and "cancer 1.0.0 is active" in out
    code, out, _ = run_cli(capsys, "store", "install", cancer_bundle_v2, "--config", cfg)
    assert code == 0
    code, out, _ = run_cli(capsys, "store", "status", "--config", cfg, "--json")
    st = json.loads(out)
    assert st["slots"]["active"]["version"] == "2.0.0" and st["slots"]["previous"]["version"] == "1.0.0"
    code, out, _ = run_cli(capsys, "store", "rollback", "--config", cfg)
    assert code == 0 and "cancer 1.0.0 is active" in out
    code, out, _ = run_cli(capsys, "store", "remove", "previous", "--config", cfg)
    assert code == 0
    code, _, err = run_cli(capsys, "store", "rollback", "--config", cfg)
    assert code == 1 and err == ("edge-runtime: error: rollback: there is no previous bundle to "
                                 "roll back to (conflict, field slot)\n")
    code, _, err = run_cli(capsys, "store", "status", "--config", tmp_path / "missing.toml")
    assert code == 1 and "config file not found" in err


def _start(argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _wait_address(proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    proc.kill()
    pytest.fail(f"no address announced: {proc.stderr.read()}")


def _stop(proc):
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.slow
def test_serve_subprocess(cancer_bundle, rows):
    proc = _start(["serve", "--bundle", cancer_bundle, "--port", "0"])
    try:
        port = _wait_address(proc)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/predict", json.dumps({"rows": rows[:3]}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and len(json.loads(r.read())["predictions"]) == 3
        c.close()
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.slow
def test_run_subprocess_serves_the_store(capsys, tmp_path, keypair, cancer_bundle, rows):
    cfg = _device_toml(tmp_path, keypair)
    assert main(["store", "install", str(cancer_bundle), "--config", str(cfg)]) == 0
    capsys.readouterr()
    proc = _start(["run", "--config", cfg], env={"EDGE_DEVICE__ID": "dev-env"})
    try:
        port = _wait_address(proc)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        health = json.loads(c.getresponse().read())
        assert health["device"] == "dev-env" and health["model"]["version"] == "1.0.0"
        c.close()
    finally:
        _stop(proc)
    assert proc.returncode == 0
    # the daemon released the store lock when it stopped
    assert main(["store", "status", "--config", str(cfg)]) == 0


def test_bench_a_raw_tensor_bundle(capsys, tmp_path, keypair):
    """Image-style bundles (raw NCHW tensors, no named features) are timed through
    run_tensors next to the raw session, instead of failing with a traceback."""
    import numpy as np
    from onnx import TensorProto, helper

    from edge_runtime.bundle import write_bundle

    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "t",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1, 2, 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1, 2, 2])])
    onx = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 1, 2, 2)
    b = write_bundle(tmp_path / "img", {
        "name": "img", "version": "1", "format": "onnx", "model_file": "model.onnx",
        "task": "raw", "outputs": [{"name": "Y", "role": "raw"}],
        "inputs": {"kind": "tensors",
                   "tensors": [{"name": "X", "dtype": "float32", "shape": [None, 1, 2, 2]}]},
        "golden": [{"tensors": {"X": x.tolist()}}]},
        {"model.onnx": onx.SerializeToString()}, key=keypair[0]).root
    code, out, err = run_cli(capsys, "bench", "--bundle", b, "--runs", "100", "--batch", "5",
                             "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["model"]["features"] == {"X": [None, 1, 2, 2]} and r["batch_size"] == 5
    assert list(r["single_row"]) == ["raw_session_run", "in_process_predict"]
    assert r["batch"]["in_process_predict"]["n"] == 200 and r["ratio_batch_p50"] > 0

    from edge_runtime import Model
    from edge_runtime.bench import sample_tensors

    t = sample_tensors(Model.load(b), 5)["X"]
    assert t.shape == (5, 1, 2, 2) and np.array_equal(t[:2], x) and np.array_equal(t[2:4], x)
