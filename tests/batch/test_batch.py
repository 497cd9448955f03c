"""Batch scoring: formats, same results as Model.predict, rejects, atomic output, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cloud_hub.batch import BatchSpec, run_batch
from cloud_hub.batch.io import InputReader
from edge_runtime import Model, ValidationError
from edge_runtime.errors import ConflictError
from tests.batch.conftest import make_table

DATE = "2026-01-31T02:00:00Z"


def read_any(path) -> pa.Table:
    path = str(path)
    if path.endswith(".parquet"):
        return pq.read_table(path)
    if path.endswith(".csv"):
        return pacsv.read_csv(path)
    return pa.Table.from_pylist([json.loads(line) for line in open(path)])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("out_fmt", ["parquet", "csv", "jsonl"])
def test_formats_score_like_predict_and_reject_bad_rows(
    tmp_path, cancer_bundle, features, clean_table, bad_rows_files, fmt, out_fmt
):
    _, paths, expected_bad = bad_rows_files
    out = tmp_path / f"scored.{out_fmt}"
    res = run_batch(
        BatchSpec(
            str(cancer_bundle),
            str(paths[fmt]),
            str(out),
            id_columns=["customer_id"],
            batch_size=256,
            scoring_date=DATE,
            workers=2,
        )
    )
    bad = expected_bad[fmt]
    assert res.status == "succeeded"
    assert (res.rows_in, res.rows_out, res.rows_rejected) == (1500, 1500 - len(bad), len(bad))
    table = read_any(out)
    assert table.column_names == [
        "customer_id",
        "score",
        "label",
        "risk_level",
        "model_name",
        "model_version",
        "scored_at",
    ]
    good = [i for i in range(1500) if i not in bad]
    ids = [f"c{i:07d}" for i in good]
    assert table.column("customer_id").to_pylist() == ids  # input order kept
    # Same contract and results as /predict: Model.predict on the same rows.
    model = Model.load(cancer_bundle)
    src = clean_table.to_pylist()
    want = model.predict([{f: src[i][f] for f in features} for i in good])
    got = table.select(["score", "label", "risk_level"]).to_pylist()
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["probability"], abs=1e-6)
        assert g["label"] == w["label"] and g["risk_level"] == w["risk_level"]
    assert set(table.column("model_name").to_pylist()) == {"cancer"}
    assert set(map(str, table.column("model_version").to_pylist())) == {"1.0.0"}
    assert str(
        table.column("scored_at")[0].as_py()
        if out_fmt == "parquet"
        else table.column("scored_at")[0]
    ).startswith("2026-01-31")
    rejects = [json.loads(line) for line in open(res.rejects)]
    assert {r["row_number"]: r["field"] for r in rejects} == bad
    for r in rejects:
        assert r["reason"]
        if r["field"] != "line":
            assert r["customer_id"] == f"c{r['row_number']:07d}"
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_reject_reasons_are_clear(tmp_path, cancer_bundle, bad_rows_files, features):
    _, paths, _ = bad_rows_files
    res = run_batch(
        BatchSpec(
            str(cancer_bundle),
            str(paths["jsonl"]),
            str(tmp_path / "o.parquet"),
            id_columns=["customer_id"],
            batch_size=100,
        )
    )
    reasons = {r["row_number"]: r["reason"] for r in map(json.loads, open(res.rejects))}
    assert reasons[3] == f"missing feature(s) {features[5]}"
    assert reasons[4] == f"{features[0]}: expected a number, got str"
    assert reasons[5] == f"{features[0]}: expected a number, got bool"
    assert reasons[6].startswith("line is not valid JSON")
    assert reasons[7] == "line is not a JSON object"
    res = run_batch(
        BatchSpec(
            str(cancer_bundle),
            str(paths["csv"]),
            str(tmp_path / "o.csv"),
            id_columns=["customer_id"],
            batch_size=100,
        )
    )
    reasons = {r["row_number"]: r["reason"] for r in map(json.loads, open(res.rejects))}
    assert reasons[20] == f"{features[0]}: expected a number, got 'abc'"
    assert "missing value" in reasons[1000]


def test_without_id_column_rows_are_numbered(tmp_path, cancer_bundle, bad_rows_files):
    _, paths, _ = bad_rows_files
    out = tmp_path / "o.parquet"
    run_batch(BatchSpec(str(cancer_bundle), str(paths["parquet"]), str(out), batch_size=300))
    t = pq.read_table(out)
    assert t.column_names[0] == "row_number"
    assert t.column("row_number").to_pylist() == [i for i in range(1500) if i not in (10, 700)]


def test_reader_streams_fixed_size_batches(bad_rows_files, features):
    _, paths, _ = bad_rows_files
    for fmt, path in paths.items():
        reader = InputReader(path, features, ["customer_id"], batch_size=128)
        sizes = [b.num_rows for b in reader.batches()]
        assert sizes == [128] * 11 + [1500 - 11 * 128], fmt  # never the whole file at once
        assert set(reader.columns) == {"customer_id", *features}  # only the needed columns


def test_bad_input_is_refused_before_any_work(tmp_path, cancer_bundle, clean_table, features):
    src = tmp_path / "in.parquet"
    pq.write_table(clean_table.drop_columns([features[3]]), src)
    with pytest.raises(ValidationError) as e:
        run_batch(BatchSpec(str(cancer_bundle), str(src), str(tmp_path / "o.parquet")))
    assert e.value.field == features[3] and "no column" in e.value.message
    typed = clean_table.set_column(2, features[0], pa.array(["x"] * clean_table.num_rows))
    pq.write_table(typed, src)
    with pytest.raises(ValidationError) as e:
        run_batch(BatchSpec(str(cancer_bundle), str(src), str(tmp_path / "o.parquet")))
    assert e.value.field == features[0] and "type string" in e.value.message
    pq.write_table(clean_table, src)
    with pytest.raises(ValidationError) as e:
        run_batch(
            BatchSpec(
                str(cancer_bundle), str(src), str(tmp_path / "o.parquet"), id_columns=["nope"]
            )
        )
    assert e.value.field == "nope"
    with pytest.raises(ValidationError) as e:
        run_batch(BatchSpec(str(cancer_bundle), str(src), str(tmp_path / "o.txt")))
    assert e.value.field == "format"
    (tmp_path / "exists.parquet").write_bytes(b"x")
    with pytest.raises(ConflictError):
        run_batch(BatchSpec(str(cancer_bundle), str(src), str(tmp_path / "exists.parquet")))
    assert (tmp_path / "exists.parquet").read_bytes() == b"x"


def _cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        **kw,
    )


def test_cli_help_and_clean_errors(tmp_path, cancer_bundle):
    r = _cli("batch", "run", "--help")
    assert r.returncode == 0 and "--id-column" in r.stdout and "--engine" in r.stdout
    r = _cli(
        "batch",
        "run",
        "--model",
        str(cancer_bundle),
        "--input",
        str(tmp_path / "none.csv"),
        "--output",
        str(tmp_path / "o.csv"),
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_resolves_ref_through_registry(tmp_path, batch_hub, bad_rows_files):
    _, paths, _ = bad_rows_files
    env = {**os.environ, "HUB_DATA_DIR": str(batch_hub.data_dir)}
    out = tmp_path / "o.parquet"
    r = _cli(
        "batch",
        "run",
        "--model",
        "cancer:1.0.0",
        "--input",
        str(paths["parquet"]),
        "--output",
        str(out),
        "--id-column",
        "customer_id",
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rows_out"] == 1498 and res["model"]["version"] == "1.0.0"
    assert pq.read_table(out).num_rows == 1498
    r = _cli(
        "batch",
        "run",
        "--model",
        "cancer@nope",
        "--input",
        str(paths["parquet"]),
        "--output",
        str(tmp_path / "o2.parquet"),
        env=env,
    )
    assert r.returncode == 1 and "alias" in r.stderr


def test_killed_job_leaves_no_output_and_rerun_gives_exact_output(
    tmp_path, cancer_bundle, cancer_data
):
    src = tmp_path / "big.parquet"
    pq.write_table(make_table(cancer_data, 120_000, seed=3), src, row_group_size=10_000)
    ref = tmp_path / "ref.parquet"
    run_batch(
        BatchSpec(
            str(cancer_bundle),
            str(src),
            str(ref),
            id_columns=["customer_id"],
            batch_size=500,
            scoring_date=DATE,
        )
    )
    out = tmp_path / "out.parquet"
    cmd = [
        "batch",
        "run",
        "--model",
        str(cancer_bundle),
        "--input",
        str(src),
        "--output",
        str(out),
        "--id-column",
        "customer_id",
        "--batch-size",
        "500",
        "--workers",
        "1",
        "--scoring-date",
        DATE,
        "--json",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub.cli", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cp = tmp_path / ".out.parquet.partial" / "checkpoint.json"
    deadline = time.monotonic() + 60
    done = 0
    try:
        while time.monotonic() < deadline:
            try:
                done = json.loads(cp.read_text())["batches"]
            except (OSError, ValueError):
                done = 0
            if done >= 20 or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert done >= 20
    assert not out.exists()  # no half file that looks complete
    r = _cli(*cmd)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["resumed_from_batch"] >= 20 and res["rows_in"] == 120_000
    assert pq.read_table(out).equals(pq.read_table(ref))
    assert not (tmp_path / ".out.parquet.partial").exists()


def test_no_resume_restarts_cleanly(tmp_path, cancer_bundle, clean_table):
    src = tmp_path / "in.parquet"
    pq.write_table(clean_table, src)
    out = tmp_path / "o.csv"
    spec = BatchSpec(
        str(cancer_bundle),
        str(src),
        str(out),
        id_columns=["customer_id"],
        batch_size=100,
        scoring_date=DATE,
    )
    written = {"batches": 0}

    def progress(p):
        written["batches"] = p.batches

    res = run_batch(
        spec,
        on_progress=progress,
        cancelled=lambda: "interrupt" if written["batches"] >= 3 else False,
    )
    assert res.status == "interrupted" and not out.exists()
    res = run_batch(spec)
    assert res.status == "succeeded" and res.resumed_from_batch >= 3
    once = out.read_bytes()
    out.unlink()
    spec.resume = False
    assert run_batch(spec).resumed_from_batch == 0
    assert out.read_bytes() == once
    np.testing.assert_equal(len(pacsv.read_csv(out)), 1500)


def test_process_workers_equal_thread_workers(tmp_path, cancer_bundle, bad_rows_files):
    _, paths, expected_bad = bad_rows_files
    outs = []
    for processes in (False, True):
        out = tmp_path / f"o-{processes}.parquet"
        res = run_batch(
            BatchSpec(
                str(cancer_bundle),
                str(paths["parquet"]),
                str(out),
                id_columns=["customer_id"],
                batch_size=200,
                workers=2,
                scoring_date=DATE,
                processes=processes,
            )
        )
        assert res.rows_rejected == len(expected_bad["parquet"])
        outs.append((pq.read_table(out), open(res.rejects).read()))
    assert outs[0][0].equals(outs[1][0]) and outs[0][1] == outs[1][1]


def test_feature_matrix_fast_path_matches_row_checks(cancer_bundle, clean_table, features):
    """The vectorised NaN screen flags exactly the rows a per-row check would, the reused
    per-thread buffer gives the same matrix as a fresh one, and +inf/-inf are refused like
    /predict refuses them (a non-finite value for a feature whose NaN policy is reject)."""
    from cloud_hub.batch.scoring import BatchScorer

    scorer = BatchScorer(Model.load(cancer_bundle), ["customer_id"])
    t = clean_table.combine_chunks()
    cols = {c: t.column(c).to_numpy().copy() for c in features}
    cols[features[3]][7] = np.nan
    cols[features[0]][8], cols[features[1]][8] = np.inf, -np.inf
    cols[features[29]][1499] = np.nan
    batch = pa.RecordBatch.from_arrays(
        [t.column("customer_id").chunk(0)] + [pa.array(cols[c]) for c in features],
        names=["customer_id", *features],
    )
    x_fresh, problems = scorer.features(batch)
    x_reused, problems2 = scorer.features(batch, reuse=True)
    np.testing.assert_array_equal(x_fresh, x_reused)
    assert x_reused.flags.c_contiguous and x_reused.shape == (1500, 30)
    want = np.column_stack([cols[c] for c in features]).astype(np.float32)
    np.testing.assert_array_equal(x_fresh, want)
    assert problems == problems2
    assert sorted(problems) == [7, 8, 1499]
    assert problems[7].feature == features[3] and problems[1499].feature == features[29]
    assert "missing value" in problems[7].reason and problems[7].code == "invalid_input"
    assert problems[8].feature == features[0] and "inf is not allowed" in problems[8].reason
    # the same refusals as the contract gives JSON rows (/predict)
    for i, ref in problems.items():
        row = {c: float(cols[c][i]) for c in features}
        with pytest.raises(ValidationError) as ei:
            scorer.model.codec.encode([row])
        assert ei.value.field == f"rows[0].{ref.feature}" and ei.value.message.endswith(ref.reason)


def test_parquet_output_has_plain_types(tmp_path, cancer_bundle, bad_rows_files):
    """Text columns are written dictionary-encoded but read back as plain strings."""
    _, paths, _ = bad_rows_files
    out = tmp_path / "o.parquet"
    run_batch(
        BatchSpec(str(cancer_bundle), str(paths["parquet"]), str(out), id_columns=["customer_id"])
    )
    schema = pq.read_schema(out)
    assert schema.field("label").type == pa.string()
    assert schema.field("risk_level").type == pa.string()
    assert schema.field("model_name").type == pa.string()
    assert schema.field("customer_id").type == pa.string()
    assert schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    meta = pq.ParquetFile(out).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(7)}
    assert "RLE_DICTIONARY" in encodings["label"]
    assert "RLE_DICTIONARY" not in encodings["score"]


@pytest.mark.parametrize(
    "levels",
    [
        [("high", 0.7), ("medium", 0.4), ("low", 0.0)],
        [("high", 0.7), ("medium", 0.4)],
        [("a", 0.2), ("b", 0.5), ("c", 0.1)],  # not sorted: list order decides
        [("only", 0.5)],
    ],
)
def test_vectorised_risk_levels_match_model_risk_level(levels):
    from cloud_hub.batch.scoring import BatchScorer

    from edge_runtime.postprocess import PostProcessor

    post = PostProcessor.__new__(PostProcessor)  # only the risk table is needed
    post.risk_levels = levels
    post._risk_mins = np.array([lo for _, lo in levels], dtype=np.float64)
    scorer = BatchScorer.__new__(BatchScorer)
    scorer.post = post
    scorer.risk_levels = levels
    scorer.risk_names = pa.array([name for name, _ in levels])
    p = np.array([0, 0.1, 0.2, 0.39999, 0.4, 0.5, 0.69, 0.7, 0.71, 1.0, np.nan, -0.1, np.inf])

    def first_reached(x):
        return next((name for name, lo in levels if x >= lo), None)

    want = [first_reached(x) for x in p]
    assert scorer._risk(p, None).to_pylist() == want
    rejected = np.zeros(len(p), dtype=bool)
    rejected[3] = True
    want[3] = None
    assert scorer._risk(p, rejected).to_pylist() == want
