"""Input readers: Parquet, CSV and JSON lines as a stream of Arrow record batches.

Every reader yields batches of exactly ``batch_size`` rows (the last one may be
shorter), whatever the file's row groups or CSV blocks are, so batch offsets
are stable across runs (checkpoints count them) and across engines. Only the
columns the job needs (features + id columns) are read. Memory is bounded by
the batch size: nothing reads the whole file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.contract import KINDS, Refused
from edge_runtime.errors import ValidationError

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}

#: JSONL/CSV rows that cannot be decoded carry their reason in these columns.
ERROR_COL = "_reject_reason"
FIELD_COL = "_reject_field"


def detect_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in ("parquet", "csv", "jsonl"):
            raise ValidationError(
                f"unknown format {explicit!r}: use parquet, csv or jsonl", field="format"
            )
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValidationError(
            f"cannot tell the format of {Path(path).name!r} from its extension; "
            "use .parquet, .csv or .jsonl (or pass the format)",
            field="format",
        )
    return FORMATS[suffix]


@dataclass
class InputInfo:
    path: Path
    format: str
    size: int
    mtime_ns: int
    total_rows: int | None  # known for Parquet only

    def fingerprint(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }


class InputReader:
    """Opens one input file and checks its columns against the job before any work."""

    def __init__(
        self,
        path: str | Path,
        features: Sequence[str],
        id_columns: Sequence[str],
        batch_size: int,
        fmt: str | None = None,
        feature_dtypes: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValidationError(f"input file {str(self.path)!r} does not exist", field="input")
        if batch_size < 1:
            raise ValidationError("batch size must be at least 1", field="batch_size")
        self.format = detect_format(self.path, fmt)
        self.features = list(features)
        self.id_columns = list(id_columns)
        self.batch_size = batch_size
        self.feature_dtypes = feature_dtypes or {}
        st = self.path.stat()
        total = None
        if self.format == "parquet":
            try:
                # pre_buffer=False: with it, iter_batches buffers every row group of the
                # file (memory grows with the input size).
                # page_checksum_verification: a page whose CRC is written (our outputs
                # write them) and does not match is refused instead of decoded.
                self._pf = pq.ParquetFile(self.path, pre_buffer=False, page_checksum_verification=True)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError
                raise ValidationError(
                    f"{self.path.name} is not a readable Parquet file: {exc}", field="input"
                ) from exc
            total = self._pf.metadata.num_rows
            self._check_parquet_schema(self._pf.schema_arrow)
        elif self.format == "csv":
            self._check_csv_header()
        self.info = InputInfo(self.path.resolve(), self.format, st.st_size, st.st_mtime_ns, total)

    @property
    def columns(self) -> list[str]:
        return self.id_columns + [f for f in self.features if f not in self.id_columns]

    # ---- schema checks -------------------------------------------------------------
    def _check_parquet_schema(self, schema: pa.Schema) -> None:
        names = set(schema.names)
        for c in self.id_columns:
            if c not in names:
                raise ValidationError(
                    f"input has no id column {c!r} (columns: {', '.join(schema.names[:20])})",
                    field=c,
                )
        missing = [f for f in self.features if f not in names]
        if missing:
            raise ValidationError(
                f"input has no column for feature(s) {', '.join(missing[:10])} "
                "required by the model",
                field=missing[0],
            )
        for f in self.features:
            t = schema.field(f).type
            ok = (
                pa.types.is_integer(t)
                or pa.types.is_floating(t)
                or pa.types.is_null(t)
                or (pa.types.is_boolean(t) and self.feature_dtypes.get(f) == "bool")
                or (pa.types.is_decimal(t))
                or (self.feature_dtypes.get(f) == "string"  # a text category (issue 12)
                    and (pa.types.is_string(t) or pa.types.is_large_string(t)
                         or pa.types.is_dictionary(t)))
            )
            if not ok:
                raise ValidationError(
                    f"column {f!r} has type {t}; the model needs numbers for this feature", field=f
                )

    def _check_csv_header(self) -> None:
        with open(self.path, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise ValidationError(f"{self.path.name} is empty (no CSV header)", field="input")
        names = set(header)
        for c in self.id_columns:
            if c not in names:
                raise ValidationError(
                    f"input has no id column {c!r} (columns: {', '.join(header[:20])})", field=c
                )
        missing = [f for f in self.features if f not in names]
        if missing:
            raise ValidationError(
                f"input has no column for feature(s) {', '.join(missing[:10])} "
                "required by the model",
                field=missing[0],
            )

    # ---- reading ---------------------------------------------------------------------
    def batches(self) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            it = self._parquet_batches()
        elif self.format == "csv":
            it = _csv_batches(self.path, self.columns, self.batch_size)
        else:
            it = _jsonl_batches(self.path, self.features, self.id_columns, self.batch_size,
                                self.feature_dtypes)
        return rebatch(it, self.batch_size)


    def _parquet_batches(self) -> Iterator[pa.RecordBatch]:
        """Row group by row group, so an unreadable page names its row group; nothing of
        that row group is scored (pyarrow decodes a page fully before handing rows out)."""
        for rg in range(self._pf.num_row_groups):
            it = self._pf.iter_batches(batch_size=self.batch_size, columns=self.columns, row_groups=[rg])
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except (OSError, pa.ArrowException) as exc:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                    raise ValidationError(
                        f"{self.path.name}: row group {rg} cannot be read (corrupt page or page "
                        f"checksum mismatch): {first}", field="input") from exc
                yield batch


def csv_options(columns: Sequence[str], batch_size: int):
    """CSV read/convert options shared by the local and the Ray engine.

    Every needed column is read as text: the scorer parses feature values
    itself, so one bad value rejects one row instead of failing the whole file
    (Arrow's type inference is per block and would abort mid-file).
    """
    from pyarrow import csv as pacsv

    read = pacsv.ReadOptions(block_size=max(1 << 20, min(64 << 20, batch_size * 512)))
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(columns),
        strings_can_be_null=True,
        null_values=["", "NULL", "null", "NA", "N/A"],
    )
    return read, convert


def _csv_batches(path: Path, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    from pyarrow import csv as pacsv

    read, convert = csv_options(columns, batch_size)
    try:
        reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
        yield from reader
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"{path.name}: CSV cannot be read: {exc}", field="input") from exc


_MISSING = object()


def parse_jsonl_lines(
    lines: Sequence[bytes | str],
    features: Sequence[str],
    id_columns: Sequence[str],
    feature_dtypes: Mapping[str, str] | None = None,
) -> pa.RecordBatch:
    """Decode JSON lines into a batch: features as float64, ids as given, errors per row.

    Values keep the JSON contract of ``/predict`` (:mod:`edge_runtime.contract`): numbers
    for number features, ``true``/``false`` (or 0/1) for ``bool`` features; a missing key
    is a missing feature; ``null`` is a missing value (refused later unless the feature
    allows NaN).
    """
    n = len(lines)
    k = len(features)
    dtypes = feature_dtypes or {}
    kinds = [KINDS.get(dtypes.get(name, "float32"), KINDS["float32"]) for name in features]
    plain = [kind.plain for kind in kinds]
    x = np.full((n, k), np.nan, dtype=np.float64)
    nulls = np.zeros((n, k), dtype=bool)
    ids: list[list[Any]] = [[None] * n for _ in id_columns]
    reasons: list[str | None] = [None] * n
    fields: list[str | None] = [None] * n
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            reasons[i], fields[i] = f"line is not valid JSON: {exc}", "line"
            continue
        if not isinstance(obj, dict):
            reasons[i], fields[i] = "line is not a JSON object", "line"
            continue
        for c, col in zip(id_columns, ids):
            v = obj.get(c)
            col[i] = v if v is None or isinstance(v, (str, int, float)) else json.dumps(v)
        row = x[i]
        missing = []
        for j, name in enumerate(features):
            v = obj.get(name, _MISSING)
            t = type(v)
            if (t is float or t is int) and plain[j]:
                try:
                    row[j] = v
                except OverflowError:  # an int beyond float64
                    row[j] = np.inf if v > 0 else -np.inf
            elif v is None:
                nulls[i, j] = True
            elif v is _MISSING:
                missing.append(name)
            elif reasons[i] is None:
                try:
                    row[j] = kinds[j].from_value(v)
                except Refused as exc:
                    reasons[i], fields[i] = f"{name}: {exc}", name
        if missing:  # a whole-row problem: reported before any value's
            reasons[i], fields[i] = f"missing feature(s) {', '.join(missing)}", missing[0]
    arrays: list[pa.Array] = []
    names: list[str] = []
    for c, col in zip(id_columns, ids):
        names.append(c)
        arrays.append(_id_array(col))
    for j, name in enumerate(features):
        if name in id_columns:
            continue
        names.append(name)
        m = nulls[:, j]
        arrays.append(pa.array(x[:, j], mask=m if m.any() else None))
    names += [ERROR_COL, FIELD_COL]
    arrays += [pa.array(reasons, pa.string()), pa.array(fields, pa.string())]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _id_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _jsonl_batches(
    path: Path,
    features: Sequence[str],
    id_columns: Sequence[str],
    batch_size: int,
    feature_dtypes: Mapping[str, str] | None = None,
) -> Iterator[pa.RecordBatch]:
    buf: list[bytes] = []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            buf.append(line)
            if len(buf) >= batch_size:
                yield parse_jsonl_lines(buf, features, id_columns, feature_dtypes)
                buf = []
    if buf:
        yield parse_jsonl_lines(buf, features, id_columns, feature_dtypes)


def rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a batch stream into batches of exactly ``size`` rows (last one shorter)."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        if not pending and b.num_rows == size:
            yield b
            continue
        pending.append(b)
        have += b.num_rows
        while have >= size:
            table = pa.Table.from_batches(pending)
            head = table.slice(0, size).combine_chunks().to_batches()[0]
            yield head
            rest = table.slice(size)
            have = rest.num_rows
            pending = rest.combine_chunks().to_batches() if have else []
    if have:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def file_size(path: str | Path) -> int:
    return os.stat(path).st_size
