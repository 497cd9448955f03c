"""Checkpointed output: parts + checkpoint while running, one atomic rename at the end.

While a job runs, its output lives in a hidden work directory next to the
output file (``.NAME.partial/``): one part file per input batch and a
``checkpoint.json`` listing the parts that are complete. A part is written to a
temp name and renamed before the checkpoint mentions it, so after a crash or a
SIGKILL the checkpoint never points at half a part. At the end the parts are
merged into ``NAME.tmp-PID`` and renamed to ``NAME``: a file at the output path
is always complete. A rerun with the same input, model and options resumes
after the last checkpointed batch; anything else starts over.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cloud_hub.batch.io import detect_format
from cloud_hub.batch.scoring import rejects_to_jsonl
from edge_runtime.errors import ConflictError, ValidationError

CHECKPOINT = "checkpoint.json"
CHECKPOINT_VERSION = 1


def work_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def default_rejects_path(output: Path) -> Path:
    stem = output.name
    for ext in (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".json"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return output.with_name(stem + ".rejects.jsonl")


@dataclass
class Checkpoint:
    fingerprint: dict[str, Any]
    scored_at: str
    batches: int = 0  # input batches done (parts 0..batches-1 exist)
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    parts: list[dict[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint,
                "scored_at": self.scored_at, "batches": self.batches, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "rows_rejected": self.rows_rejected, "parts": self.parts}


class PartWriter:
    """Writes one part per batch, checkpoints, and merges the parts at the end."""

    def __init__(self, output: str | Path, rejects: str | Path | None, fingerprint: dict[str, Any],
                 scored_at: dt.datetime, *, fmt: str | None = None, overwrite: bool = False,
                 resume: bool = True) -> None:
        self.output = Path(output).absolute()
        self.format = detect_format(self.output, fmt)
        self.rejects_path = Path(rejects).absolute() if rejects else default_rejects_path(self.output)
        if self.rejects_path == self.output:
            raise ValidationError("the rejects file must differ from the output file", field="rejects")
        if not self.output.parent.is_dir():
            raise ValidationError(f"output directory {str(self.output.parent)!r} does not exist",
                                  field="output")
        if self.output.exists() and not overwrite:
            raise ConflictError(f"output {str(self.output)!r} already exists; pass --overwrite to "
                                "replace it", field="output")
        self.dir = work_dir_for(self.output)
        self.dir.mkdir(exist_ok=True)
        self._lock = open(self.dir / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ConflictError(f"another job is writing {str(self.output)!r}", field="output") from exc
        fp = dict(fingerprint, output_format=self.format)
        self.resumed_from = 0
        cp = self._load() if resume else None
        if cp is not None and cp.fingerprint == fp:
            self.cp = cp
            self.resumed_from = cp.batches
        else:
            self._clear_parts()
            self.cp = Checkpoint(fp, scored_at.isoformat())
        self._drop_stale_parts()
        self._schema: pa.Schema | None = None

    @property
    def scored_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.cp.scored_at)

    # ---- checkpoint ----------------------------------------------------------------
    def _load(self) -> Checkpoint | None:
        try:
            data = json.loads((self.dir / CHECKPOINT).read_text())
            if data.get("version") != CHECKPOINT_VERSION:
                return None
            return Checkpoint(data["fingerprint"], data["scored_at"], data["batches"],
                              data["rows_in"], data["rows_out"], data["rows_rejected"],
                              data.get("parts", []))
        except (OSError, ValueError, KeyError):
            return None

    def _save(self) -> None:
        tmp = self.dir / (CHECKPOINT + ".tmp")
        tmp.write_text(json.dumps(self.cp.to_dict()))
        os.replace(tmp, self.dir / CHECKPOINT)

    def _clear_parts(self) -> None:
        for p in self.dir.iterdir():
            if p.name != "lock":
                p.unlink()

    def _drop_stale_parts(self) -> None:
        for p in self.dir.iterdir():
            if p.name.startswith(("part-", "rejects-")):
                try:
                    idx = int(p.name.split("-")[1].split(".")[0])
                except ValueError:
                    idx = -1
                if idx < 0 or idx >= self.cp.batches or ".tmp" in p.name:
                    p.unlink()

    def _part(self, i: int) -> Path:
        return self.dir / f"part-{i:06d}.{self.format}"

    def _rej(self, i: int) -> Path:
        return self.dir / f"rejects-{i:06d}.jsonl"

    # ---- writing ---------------------------------------------------------------------
    def write(self, index: int, rows_in: int, out: pa.Table, rejects: pa.Table) -> None:
        if index != self.cp.batches:
            raise RuntimeError(f"part {index} written out of order (expected {self.cp.batches})")
        part = self._part(index)
        tmp = part.with_name(part.name + ".tmp")
        write_table(out, tmp, self.format, header=(index == 0))
        os.replace(tmp, part)
        if rejects.num_rows:
            rtmp = self._rej(index).with_name(self._rej(index).name + ".tmp")
            rtmp.write_bytes(rejects_to_jsonl(rejects))
            os.replace(rtmp, self._rej(index))
        self.cp.batches += 1
        self.cp.rows_in += rows_in
        self.cp.rows_out += out.num_rows
        self.cp.rows_rejected += rejects.num_rows
        self.cp.parts.append({"rows": out.num_rows, "rejects": rejects.num_rows})
        self._save()

    def finalize(self) -> None:
        """Merge the parts into the output (atomic rename) and the rejects file, then clean up."""
        tmp = self.output.with_name(f"{self.output.name}.tmp-{os.getpid()}")
        try:
            merge_parts([self._part(i) for i in range(self.cp.batches)], tmp, self.format)
            rtmp = self.rejects_path.with_name(f"{self.rejects_path.name}.tmp-{os.getpid()}")
            with open(rtmp, "wb") as fh:
                for i in range(self.cp.batches):
                    if self._rej(i).exists():
                        with open(self._rej(i), "rb") as src:
                            shutil.copyfileobj(src, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(rtmp, self.rejects_path)
            os.replace(tmp, self.output)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.discard()

    def discard(self) -> None:
        """Forget the work directory (job finished or cancelled)."""
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    def release(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def write_table(table: pa.Table, path: Path, fmt: str, *, header: bool = True) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, compression="zstd")
    elif fmt == "csv":
        from pyarrow import csv as pacsv

        table = _undict(table)
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=header))
    else:
        table = _undict(table)
        with open(path, "w", encoding="utf-8") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row, default=_json_default, ensure_ascii=False))
                fh.write("\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return str(v)


def _undict(table: pa.Table) -> pa.Table:
    cols = []
    for c in table.columns:
        cols.append(c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c)
    return pa.table(cols, names=table.column_names)


def merge_parts(parts: list[Path], dest: Path, fmt: str) -> None:
    if fmt == "parquet":
        writer = None
        try:
            for p in parts:
                pf = pq.ParquetFile(p)
                if writer is None:
                    writer = pq.ParquetWriter(dest, pf.schema_arrow, compression="zstd")
                for g in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(g))
            if writer is None:  # no rows at all: still write a valid, empty file
                raise ValidationError("the job produced no batches (empty input)", field="input")
        finally:
            if writer is not None:
                writer.close()
        _fsync(dest)
    else:
        with open(dest, "wb") as fh:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
