"""Parquet page checksums (issue 13): verified when present, written in our outputs; a corrupt
page is one clear line naming the file and the row group, and nothing of it is scored."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cloud_hub.batch import BatchSpec, run_batch
from edge_runtime.errors import ValidationError
from tests.batch.conftest import make_table
from tests.batch.test_batch import _cli


def _flip_page(path, rg: int, col: int = 3, *, at: str = "middle") -> None:
    """Flip bytes of one column chunk: in the middle of its data (only a page checksum can
    tell), or at its start (the compressed stream/page header no longer decodes)."""
    meta = pq.ParquetFile(path).metadata.row_group(rg).column(col)
    start = meta.data_page_offset
    first = start + max(64, meta.total_compressed_size // 2) if at == "middle" else start
    data = bytearray(path.read_bytes())
    for i in range(first, min(first + 256, start + meta.total_compressed_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compression,checksum,at", [("none", True, "middle"), ("snappy", False, "start")])
def test_corrupt_page_is_one_line_naming_the_row_group(tmp_path, cancer_data, cancer_bundle, compression,
                                                       checksum, at):
    src = tmp_path / "in.parquet"
    pq.write_table(make_table(cancer_data, 3000), src, row_group_size=1000, compression=compression,
                   write_page_checksum=checksum)
    _flip_page(src, 1, at=at)
    out = tmp_path / "out.parquet"
    with pytest.raises(ValidationError, match=r"in\.parquet: row group 1 cannot be read") as ei:
        run_batch(BatchSpec(str(cancer_bundle), str(src), str(out), id_columns=["customer_id"],
                            batch_size=500, workers=1))
    assert ei.value.field == "input"
    assert not out.exists()
    r = _cli("batch", "run", "--model", str(cancer_bundle), "--input", str(src), "--output", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "row group 1" in r.stderr


def test_outputs_carry_page_checksums(tmp_path, cancer_data, cancer_bundle):
    src = tmp_path / "in.parquet"
    pq.write_table(make_table(cancer_data, 2000), src, row_group_size=1000)
    out = tmp_path / "out.parquet"
    res = run_batch(BatchSpec(str(cancer_bundle), str(src), str(out), id_columns=["customer_id"],
                              batch_size=1000, workers=1))
    assert res.status == "succeeded"
    pq.ParquetFile(out, page_checksum_verification=True).read()  # intact: verifies
    col = pq.ParquetFile(out).schema_arrow.get_field_index("score")
    _flip_page(out, 0, col)
    with pytest.raises(OSError, match="CRC|checksum"):
        pq.ParquetFile(out, page_checksum_verification=True).read()
