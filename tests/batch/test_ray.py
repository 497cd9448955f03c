"""Ray Data engine on a local Ray instance: same rows as the local engine."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cloud_hub.batch import BatchSpec, run_batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_ray_equals_local_row_for_row(local_ray, tmp_path, cancer_bundle, bad_rows_files, fmt):
    _, paths, expected_bad = bad_rows_files
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.parquet"
        res = run_batch(
            BatchSpec(
                str(cancer_bundle),
                str(paths[fmt]),
                str(out),
                id_columns=["customer_id"],
                batch_size=250,
                engine=engine,
                workers=2,
                scoring_date="2026-01-01",
            )
        )
        assert res.status == "succeeded" and res.rows_rejected == len(expected_bad[fmt])
        outs[engine] = (pq.read_table(out), open(res.rejects).read())
    assert outs["ray"][0].num_rows == 1500 - len(expected_bad[fmt])
    assert outs["ray"][0].equals(outs["local"][0])
    assert outs["ray"][1] == outs["local"][1]
