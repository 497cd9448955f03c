"""Record batch → feature matrix (contract order, validated) → scores, vectorised.

:class:`BatchScorer` is the one piece both engines run: it maps columns to
the model's features, rejects bad rows with a reason (missing value, wrong
type, NaN where refused, out of range) without failing the batch, scores the
good rows with :meth:`Model.score_array` and returns one output row per input
row (``_reject_reason`` set on rejected rows). :func:`split_scored` then adds
the constant columns (model, scoring date, row number) and separates the
output from the rejects, in input order.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloud_hub.batch.io import ERROR_COL, FIELD_COL
from edge_runtime.contract import FeatureContract, Refusal
from edge_runtime.model import Model

SCORE, LABEL, RISK = "score", "label", "risk_level"
_TRANSPOSE_BLOCK = 4096
#: Rows per engine call inside a batch (bounds the engine's working memory).
MODEL_CHUNK = 8192
MODEL_NAME, MODEL_VERSION, SCORED_AT, ROW = "model_name", "model_version", "scored_at", "row_number"
#: The refusal code of a rejected row (the contract's, as /predict answers it).
CODE_COL = "_reject_code"


@dataclass(frozen=True)
class ScoringMeta:
    """What the output records besides the scores (constant for a job)."""

    model_name: str
    model_version: str
    scored_at: dt.datetime
    id_columns: tuple[str, ...]


class BatchScorer:
    def __init__(self, model: Model, id_columns: Sequence[str]) -> None:
        if model.codec is None:
            from edge_runtime.errors import ValidationError

            raise ValidationError(
                f"model {model.name}:{model.version} takes raw tensors; batch "
                "scoring needs a model with named features",
                field="model",
            )
        self.model = model
        self.contract = model.codec
        self.post = model.post
        self.names = list(self.contract.names)
        self.id_columns = list(id_columns)
        self.dtype = self.contract.dtype
        post = self.post
        self.classes = None
        self._dict_labels = False
        if post.classes:
            self.classes = pa.array(
                post.classes if post.int_classes else [str(c) for c in post.classes],
                pa.int64() if post.int_classes else pa.string(),
            )
            # Text labels are dictionary-encoded (index per row + the class names once):
            # no per-row string building, and the Parquet writer stores the indices as is.
            self._dict_labels = not post.int_classes
        self.risk_levels = list(post.risk_levels)
        self.risk_names = pa.array([r[0] for r in self.risk_levels], pa.string())
        self._buffers = threading.local()  # per scoring thread: reused feature matrices
        self.model_chunk = MODEL_CHUNK

    # ---- features -------------------------------------------------------------------
    def features(
        self, batch: pa.RecordBatch, reuse: bool = False
    ) -> tuple[np.ndarray, dict[int, Refusal]]:
        """Return (x (n, k) in the engine's dtype, {row: Refusal} for bad rows).

        Decoding (Arrow columns → numbers) is batch's own; which values are refused, and
        why, is the bundle's contract (:class:`edge_runtime.contract.FeatureContract`) — the
        same as ``/predict`` — applied column by column: per row the first feature in
        contract order with a problem is reported.

        ``reuse=True`` writes x into a buffer owned by the calling thread, which the
        thread's next call overwrites (:meth:`score` uses it: x is dead once scored).
        Fresh 8 MB matrices per batch cost more in page faults than the copies.
        """
        n = batch.num_rows
        k = len(self.names)
        contract = self.contract
        xt, x = self._matrices(n, k, reuse)
        problems: dict[int, Refusal] = {}
        schema_names = batch.schema.names
        if ERROR_COL in schema_names:  # JSON lines / CSV rows the reader could not decode
            err = batch.column(schema_names.index(ERROR_COL))
            if err.null_count < n:
                fld = batch.column(schema_names.index(FIELD_COL)).to_pylist()
                for i, r in enumerate(err.to_pylist()):
                    if r is not None:
                        problems[i] = _reader_refusal(contract, i, r, fld[i])
        idx = {nm: i for i, nm in enumerate(schema_names)}
        for j, name in enumerate(self.names):
            if name not in idx:  # only possible for JSON lines (files are checked up front)
                xt[j] = np.nan
                for i in range(n):
                    problems.setdefault(i, Refusal(i, name, f"missing feature(s) {name}", True))
                continue
            col = self._numeric(batch.column(idx[name]), j, problems)
            for ref in contract.column_refusals(j, col):
                prev = problems.get(ref.row)
                if prev is None or (not prev.whole_row and contract.index.get(prev.feature, k) > j):
                    problems[ref.row] = ref
            with np.errstate(over="ignore"):  # a refused value too large for float32: inf
                xt[j] = col
        # Feature-major → row-major in cache-sized blocks (a plain .T copy walks
        # the source with a stride of n and is ~30 % slower at 64k rows).
        step = _TRANSPOSE_BLOCK
        for s in range(0, n, step):
            x[s : s + step] = xt[:, s : s + step].T
        return x, problems

    def _matrices(self, n: int, k: int, reuse: bool) -> tuple[np.ndarray, np.ndarray]:
        if not reuse:
            return np.empty((k, n), dtype=self.dtype), np.empty((n, k), dtype=self.dtype)
        b = self._buffers
        if getattr(b, "cap", 0) < n:
            b.xt = np.empty((k, n), dtype=self.dtype)
            b.x = np.empty((n, k), dtype=self.dtype)
            b.cap = n
        # Fill feature-major (each column a contiguous row), then transpose once.
        return b.xt[:, :n], b.x[:n]

    def _numeric(self, col: pa.Array, j: int, problems: dict[int, Refusal]) -> np.ndarray:
        """An Arrow column → numbers (nulls become NaN). CSV text is parsed here; a value
        that is not a number is refused (found before the contract's value checks)."""
        t = col.type
        kind = self.contract.kinds[j]
        if kind.name == "string":  # a text category: its code in the manifest's categories
            if pa.types.is_dictionary(t):
                col = col.cast(pa.string())
            codes, bad = kind.decode_column(col)
            for i, why in bad.items():
                prev = problems.get(i)
                if prev is None or (not prev.whole_row and self.contract.index.get(prev.feature, j + 1) > j):
                    problems[i] = Refusal(i, self.names[j], why)
            return codes
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            return col.to_numpy(zero_copy_only=False)  # nulls become NaN
        name = self.names[j]
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            if self.contract.kinds[j].name == "bool":
                col = pc.utf8_lower(pc.utf8_trim_whitespace(col))
                col = pc.if_else(pc.equal(col, "true"), "1", pc.if_else(pc.equal(col, "false"), "0", col))
            try:
                return pc.cast(pc.utf8_trim_whitespace(col), pa.float64()).to_numpy(
                    zero_copy_only=False
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
            out = np.full(len(col), np.nan)
            for i, v in enumerate(col.to_pylist()):
                if v is None:
                    continue
                try:
                    out[i] = float(v)
                except ValueError:
                    prev = problems.get(i)
                    if prev is None or (not prev.whole_row and self.contract.index.get(prev.feature, j + 1) > j):
                        shown = v if len(v) <= 40 else v[:37] + "..."
                        problems[i] = Refusal(i, name, f"expected a number, got {shown!r}")
            return out
        if pa.types.is_null(t):
            return np.full(len(col), np.nan)
        if pa.types.is_boolean(t):
            if self.contract.kinds[j].name == "bool":  # True/False → 1/0, null → NaN
                return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
            return pc.fill_null(col, False).to_numpy(zero_copy_only=False)  # the contract refuses bools
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)

    # ---- scoring --------------------------------------------------------------------
    def score(self, batch: pa.RecordBatch) -> pa.Table:
        """One output row per input row: ids, score, label[, risk_level], reject reason/field."""
        x, problems = self.features(batch, reuse=True)
        n = batch.num_rows
        if problems:
            ok = np.ones(n, dtype=bool)
            ok[list(problems)] = False
            n_ok = int(ok.sum())
        else:
            ok, n_ok = None, n
        score = np.full(n, np.nan)
        label_idx = np.zeros(n, dtype=np.int64)
        has_label = self.model.task in ("binary_classification", "multiclass_classification")
        if n_ok:
            sc, li = self._run_model(x if ok is None else np.ascontiguousarray(x[ok]))
            has_label = li is not None
            if ok is None:
                score = sc
                if has_label:
                    label_idx = li
            else:
                score[ok] = sc
                if has_label:
                    label_idx[ok] = li
        mask = None if ok is None else ~ok
        cols: dict[str, pa.Array] = {}
        for c in self.id_columns:
            cols[c] = batch.column(batch.schema.get_field_index(c))
        cols[SCORE] = pa.array(score, pa.float64(), mask=mask)
        if has_label:
            if self._dict_labels:
                cols[LABEL] = pa.DictionaryArray.from_arrays(
                    pa.array(label_idx.astype(np.int32), mask=mask), self.classes
                )
            elif self.classes is not None:
                cols[LABEL] = self.classes.take(pa.array(label_idx, mask=mask))
            else:
                cols[LABEL] = pa.array(label_idx, pa.int64(), mask=mask)
        if self.risk_levels and self.model.task == "binary_classification":
            cols[RISK] = self._risk(score, mask)
        if problems:
            reasons: list[str | None] = [None] * n
            fields: list[str | None] = [None] * n
            codes: list[str | None] = [None] * n
            for i, ref in problems.items():
                reasons[i], fields[i], codes[i] = ref.row_reason, ref.feature or "line", ref.code
            cols[ERROR_COL] = pa.array(reasons, pa.string())
            cols[FIELD_COL] = pa.array(fields, pa.string())
            cols[CODE_COL] = pa.array(codes, pa.string())
        else:
            cols[ERROR_COL] = pa.nulls(n, pa.string())
            cols[FIELD_COL] = pa.nulls(n, pa.string())
            cols[CODE_COL] = pa.nulls(n, pa.string())
        return pa.table(cols)

    def _run_model(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (float64) and label indices (int64 or None) of x, in slices of
        ``model_chunk`` rows: the engine's working memory (activations, kept by ONNX
        Runtime's arena for the next call) then follows the slice, not the batch, so
        a wide model no longer adds hundreds of MB per scoring thread at 64k rows."""
        n, step = len(x), self.model_chunk
        if n <= step:
            s = self.model.score_array(x)
            li = None if s.label_index is None else np.asarray(s.label_index, dtype=np.int64)
            return np.asarray(s.score, dtype=np.float64), li
        score = np.empty(n, dtype=np.float64)
        label_idx: np.ndarray | None = np.empty(n, dtype=np.int64)
        for a in range(0, n, step):
            s = self.model.score_array(x[a : a + step])
            score[a : a + step] = s.score
            if s.label_index is None:
                label_idx = None
            elif label_idx is not None:
                label_idx[a : a + step] = s.label_index
        return score, label_idx

    def _risk(self, p: np.ndarray, mask: np.ndarray | None) -> pa.Array:
        """Risk level per score (the bundle's post-processing, vectorised): null when no
        level is reached, p is NaN or the row was rejected."""
        idx = self.post.risk_index(p)
        none = idx < 0
        if mask is not None:
            none |= mask
        if none.any():
            idx[none] = 0
            return pa.DictionaryArray.from_arrays(pa.array(idx, mask=none), self.risk_names)
        return pa.DictionaryArray.from_arrays(pa.array(idx), self.risk_names)


def _reader_refusal(contract: FeatureContract, row: int, reason: str, fld: str | None) -> Refusal:
    """A reader's reason ("feature: why", or a whole-line problem) as a Refusal."""
    if fld is not None and fld in contract.index and reason.startswith(f"{fld}: "):
        return Refusal(row, fld, reason[len(fld) + 2 :])
    return Refusal(row, fld, reason, True)


def split_scored(scored: pa.Table, first_row: int, meta: ScoringMeta) -> tuple[pa.Table, pa.Table]:
    """Scored rows → (output table, rejects table); both keep input order."""
    n = scored.num_rows
    rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    reasons = scored.column(ERROR_COL)
    n_bad = n - reasons.null_count
    out_cols = [c for c in scored.column_names if c not in (ERROR_COL, FIELD_COL, CODE_COL)]
    out = scored.select(out_cols)
    if not meta.id_columns:
        out = out.add_column(0, ROW, rows)
    if n_bad:
        good = pc.is_null(reasons)
        rejects = pa.table(
            {
                ROW: rows,
                **{c: scored.column(c) for c in meta.id_columns},
                "reason": reasons,
                "field": scored.column(FIELD_COL),
                "code": scored.column(CODE_COL),
            }
        )
        rejects = rejects.filter(pc.invert(good))
        out = out.filter(good)
    else:
        rejects = None
    m = out.num_rows
    out = out.append_column(MODEL_NAME, _const_dict(meta.model_name, m))
    out = out.append_column(MODEL_VERSION, _const_dict(meta.model_version, m))
    ts = pa.array(
        np.full(m, np.datetime64(meta.scored_at.replace(tzinfo=None), "us")),
        pa.timestamp("us", tz="UTC"),
    )
    out = out.append_column(SCORED_AT, ts)
    if rejects is None:
        rejects = _empty_rejects(scored, meta)
    return out, rejects


def _const_dict(value: str, n: int) -> pa.Array:
    """A constant text column as a dictionary array: one value, n zero indices."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
    )


def _empty_rejects(scored: pa.Table, meta: ScoringMeta) -> pa.Table:
    return pa.table(
        {
            ROW: pa.array([], pa.int64()),
            **{c: pa.array([], scored.schema.field(c).type) for c in meta.id_columns},
            "reason": pa.array([], pa.string()),
            "field": pa.array([], pa.string()),
            "code": pa.array([], pa.string()),
        }
    )


def rejects_to_jsonl(rejects: pa.Table) -> bytes:
    if rejects.num_rows == 0:
        return b""
    lines = []
    for row in rejects.to_pylist():
        lines.append(json.dumps(row, default=str, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse_scoring_date(value: str | None) -> dt.datetime:
    if not value:
        return utc_now()
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        from edge_runtime.errors import ValidationError

        raise ValidationError(
            f"scoring date {value!r} is not an ISO date/time", field="scoring_date"
        ) from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.astimezone(dt.UTC)


def to_jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    return v
