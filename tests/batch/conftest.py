"""Batch fixtures: input files built from breast_cancer rows, a hub with the model registered."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def features(cancer_data) -> list[str]:
    return cancer_data[2]


def make_table(cancer_data, n: int, seed: int = 0) -> pa.Table:
    """n rows: breast_cancer rows (cycled, slightly jittered) with a customer_id column."""
    x, _, names = cancer_data
    rng = np.random.default_rng(seed)
    idx = np.arange(n) % len(x)
    xs = x[idx].astype(np.float64) * rng.uniform(0.97, 1.03, size=(n, x.shape[1]))
    cols = {
        "customer_id": pa.array([f"c{i:07d}" for i in range(n)]),
        "segment": pa.array(np.where(idx % 2 == 0, "a", "b")),
    }
    for j, name in enumerate(names):
        cols[name] = pa.array(xs[:, j])
    return pa.table(cols)


@pytest.fixture(scope="session")
def clean_table(cancer_data) -> pa.Table:
    return make_table(cancer_data, 1500)


@pytest.fixture(scope="session")
def bad_rows_files(tmp_path_factory, clean_table, features):
    """The same 1,500 rows as Parquet, CSV and JSONL, with bad rows at known places.

    Returns (dir, {fmt: path}, {row_number: field_or_None}) -- None for an undecodable line.
    """
    d = tmp_path_factory.mktemp("batch-in")
    rows = clean_table.to_pylist()
    f0, f1 = features[0], features[5]
    # Parquet: nulls and NaN (refused by the contract's default NaN policy)
    prow = [dict(r) for r in rows]
    prow[10][f0] = None
    prow[700][f1] = float("nan")
    schema = clean_table.schema
    pq.write_table(pa.Table.from_pylist(prow, schema=schema), d / "in.parquet", row_group_size=400)
    # CSV: a text value, an empty value
    pacsv.write_csv(clean_table, d / "clean.csv")
    lines = (d / "clean.csv").read_text().splitlines()
    header = lines[0].split(",")
    j0 = header.index(f'"{f0}"') if f'"{f0}"' in header else header.index(f0)

    def patch(line: str, j: int, value: str) -> str:
        cells = line.split(",")
        cells[j] = value
        return ",".join(cells)

    lines[1 + 20] = patch(lines[1 + 20], j0, "abc")
    lines[1 + 1000] = patch(lines[1 + 1000], j0, "")
    (d / "in.csv").write_text("\n".join(lines) + "\n")
    # JSONL: missing key, a string, a boolean, undecodable line, a non-object line
    with open(d / "in.jsonl", "w") as fh:
        for i, r in enumerate(rows):
            r = dict(r)
            if i == 3:
                del r[f1]
            elif i == 4:
                r[f0] = "12.5"
            elif i == 5:
                r[f0] = True
            if i == 6:
                fh.write("{not json\n")
            elif i == 7:
                fh.write("[1, 2, 3]\n")
            else:
                fh.write(json.dumps(r) + "\n")
    expected = {
        "parquet": {10: f0, 700: f1},
        "csv": {20: f0, 1000: f0},
        "jsonl": {3: f1, 4: f0, 5: f0, 6: "line", 7: "line"},
    }
    return d, {"parquet": d / "in.parquet", "csv": d / "in.csv", "jsonl": d / "in.jsonl"}, expected


@pytest.fixture
def batch_hub(tmp_path, keypair, cancer_bundle):
    """A Hub (SQLite) with the cancer bundle pushed and aliased champion."""
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]]))
    try:
        hub.registry.push(cancer_bundle)
        yield hub
    finally:
        hub.close()



@pytest.fixture(autouse=True)
def trust_fleet_key(monkeypatch, keypair):
    """Batch over a bundle path verifies its signature against the hub's trusted keys
    (cloud_hub/trust.py): these tests (and the CLIs they start) trust the test fleet key."""
    monkeypatch.setenv("HUB_TRUSTED_KEYS", json.dumps([str(keypair[1])]))
