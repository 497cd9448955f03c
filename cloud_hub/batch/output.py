"""Checkpointed output: parts + checkpoint while running, one atomic rename at the end.

While a job runs, its output lives in a hidden work directory next to the
output file (``.NAME.partial/``): one Arrow IPC part per input batch (cheap to
write: no encoding), a ``checkpoint.json`` listing the parts that are
complete, and ``final.tmp``, the output file being written progressively in
its real format as the batches complete (so the Parquet/CSV encoding overlaps
the scoring instead of running as a merge at the end). A part is written to a
temp name and renamed before the checkpoint mentions it, so after a crash or a
SIGKILL the checkpoint never points at half a part. At the end ``final.tmp``
is closed, fsynced and renamed to ``NAME``: a file at the output path is
always complete. A rerun with the same input, model and options replays the
checkpointed parts into a fresh ``final.tmp`` and resumes after the last
checkpointed batch; anything else starts over.
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
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "scored_at": self.scored_at,
            "batches": self.batches,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "parts": self.parts,
        }


class PartWriter:
    """Writes one part per batch, checkpoints, and merges the parts at the end."""

    def __init__(
        self,
        output: str | Path,
        rejects: str | Path | None,
        fingerprint: dict[str, Any],
        scored_at: dt.datetime,
        *,
        fmt: str | None = None,
        overwrite: bool = False,
        resume: bool = True,
    ) -> None:
        self.output = Path(output).absolute()
        self.format = detect_format(self.output, fmt)
        self.rejects_path = (
            Path(rejects).absolute() if rejects else default_rejects_path(self.output)
        )
        if self.rejects_path == self.output:
            raise ValidationError(
                "the rejects file must differ from the output file", field="rejects"
            )
        if not self.output.parent.is_dir():
            raise ValidationError(
                f"output directory {str(self.output.parent)!r} does not exist", field="output"
            )
        if self.output.exists() and not overwrite:
            raise ConflictError(
                f"output {str(self.output)!r} already exists; pass --overwrite to replace it",
                field="output",
            )
        self.dir = work_dir_for(self.output)
        self.dir.mkdir(exist_ok=True)
        self._lock = open(self.dir / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ConflictError(
                f"another job is writing {str(self.output)!r}", field="output"
            ) from exc
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
        self._final: FinalWriter | None = None

    @property
    def scored_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.cp.scored_at)

    # ---- checkpoint ----------------------------------------------------------------
    def _load(self) -> Checkpoint | None:
        try:
            data = json.loads((self.dir / CHECKPOINT).read_text())
            if data.get("version") != CHECKPOINT_VERSION:
                return None
            return Checkpoint(
                data["fingerprint"],
                data["scored_at"],
                data["batches"],
                data["rows_in"],
                data["rows_out"],
                data["rows_rejected"],
                data.get("parts", []),
            )
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
            if p.name == "final.tmp":
                p.unlink()
            elif p.name.startswith(("part-", "rejects-")):
                try:
                    idx = int(p.name.split("-")[1].split(".")[0])
                except ValueError:
                    idx = -1
                if idx < 0 or idx >= self.cp.batches or ".tmp" in p.name:
                    p.unlink()

    def _part(self, i: int) -> Path:
        return self.dir / f"part-{i:06d}.arrow"

    def _rej(self, i: int) -> Path:
        return self.dir / f"rejects-{i:06d}.jsonl"

    def _open_final(self) -> None:
        self._final = FinalWriter(self.dir / "final.tmp", self.format)
        self._rej_tmp = self.rejects_path.with_name(f".{self.rejects_path.name}.tmp")
        self._rej_fh = open(self._rej_tmp, "wb")
        for i in range(self.cp.batches):  # resume: replay what is already scored
            with pa.memory_map(str(self._part(i))) as src:
                self._final.write(pa.ipc.open_file(src).read_all())
            if self._rej(i).exists():
                self._rej_fh.write(self._rej(i).read_bytes())

    # ---- writing ---------------------------------------------------------------------
    def write(self, index: int, rows_in: int, out: pa.Table, rejects: pa.Table) -> None:
        if index != self.cp.batches:
            raise RuntimeError(f"part {index} written out of order (expected {self.cp.batches})")
        if self._final is None:
            self._open_final()
        part = self._part(index)
        tmp = part.with_name(part.name + ".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, out.schema) as w:
            w.write_table(out)
        os.replace(tmp, part)
        rej_bytes = rejects_to_jsonl(rejects) if rejects.num_rows else b""
        if rej_bytes:
            rtmp = self._rej(index).with_name(self._rej(index).name + ".tmp")
            rtmp.write_bytes(rej_bytes)
            os.replace(rtmp, self._rej(index))
        self.cp.batches += 1
        self.cp.rows_in += rows_in
        self.cp.rows_out += out.num_rows
        self.cp.rows_rejected += rejects.num_rows
        self.cp.parts.append({"rows": out.num_rows, "rejects": rejects.num_rows})
        self._save()
        self._final.write(out)
        if rej_bytes:
            self._rej_fh.write(rej_bytes)

    def finalize(self) -> None:
        """Close the output (fsync), rename it and the rejects file into place, clean up."""
        if self._final is None:
            self._open_final()
        self._final.close()
        self._rej_fh.flush()
        os.fsync(self._rej_fh.fileno())
        self._rej_fh.close()
        os.replace(self._rej_tmp, self.rejects_path)
        os.replace(self._final.path, self.output)
        self.discard()

    def discard(self) -> None:
        """Forget the work directory (job finished or cancelled)."""
        self._close_files()
        if hasattr(self, "_rej_tmp") and self._rej_tmp.exists():
            self._rej_tmp.unlink()
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close_files(self) -> None:
        if self._final is not None:
            self._final.abort()
        if getattr(self, "_rej_fh", None) is not None and not self._rej_fh.closed:
            self._rej_fh.close()

    def release(self) -> None:
        self._close_files()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


class FinalWriter:
    """Writes the output file progressively in its format (Parquet, CSV, JSON lines)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.format = path, fmt
        self._w = None
        self._fh = None
        self.schema: pa.Schema | None = None
        self.closed = False
        if fmt == "jsonl":
            self._fh = open(path, "w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        if self.format != "parquet":
            table = _decode_dictionaries(table)
        if self.schema is None:
            self.schema = table.schema
            if self.format == "parquet":
                # Text columns arrive dictionary-encoded (labels, risk levels, model
                # name/version): the writer stores their indices without hashing a
                # string per row. Numeric columns (ids, scores: mostly distinct) skip
                # the dictionary attempt, which would hash every value of every row
                # group before falling back to plain. store_schema=False: readers
                # see the Parquet types (plain strings), not Arrow's dictionary type.
                dict_cols = [f.name for f in self.schema if pa.types.is_dictionary(f.type)] or False
                self._w = pq.ParquetWriter(
                    self.path,
                    self.schema,
                    compression="snappy",
                    use_dictionary=dict_cols,
                    store_schema=False,
                    write_page_checksum=True,  # readers (ours included) can detect a corrupt page
                )
            elif self.format == "csv":
                from pyarrow import csv as pacsv

                self._w = pacsv.CSVWriter(str(self.path), self.schema)
        elif table.schema != self.schema:
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValidationError(
                    f"output columns changed type between batches: {exc}", field="input"
                ) from exc
        if self._fh is not None:
            for row in table.to_pylist():
                self._fh.write(json.dumps(row, default=_json_default, ensure_ascii=False))
                self._fh.write("\n")
        else:
            self._w.write_table(table)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            return
        if self._w is None:  # no rows: still write a valid file
            raise ValidationError("the job produced no output rows to write", field="input")
        self._w.close()
        _fsync(self.path)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._fh is not None:
                self._fh.close()
            elif self._w is not None:
                self._w.close()
        except Exception:  # the file is thrown away anyway
            pass


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary columns → their plain value type (CSV and JSON lines get the values)."""
    if not any(pa.types.is_dictionary(t) for t in table.schema.types):
        return table
    return table.cast(
        pa.schema(
            [
                f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                for f in table.schema
            ]
        )
    )


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return str(v)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
