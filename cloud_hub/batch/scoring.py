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
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloud_hub.batch.io import ERROR_COL, FIELD_COL
from edge_runtime.model import Model

SCORE, LABEL, RISK = "score", "label", "risk_level"
MODEL_NAME, MODEL_VERSION, SCORED_AT, ROW = "model_name", "model_version", "scored_at", "row_number"


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

            raise ValidationError(f"model {model.name}:{model.version} takes raw tensors; batch "
                                  "scoring needs a model with named features", field="model")
        self.model = model
        self.codec = model.codec
        self.names = list(self.codec.names)
        self.id_columns = list(id_columns)
        self.reject_nan = self.codec.reject_nan
        self.reject_cols = np.flatnonzero(self.reject_nan)
        self.has_range = self.codec.has_range
        self.dtype = self.codec.dtype
        classes = model.classes
        self.classes = None
        if classes:
            as_int = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
            self.classes = pa.array(classes if as_int else [str(c) for c in classes],
                                    pa.int64() if as_int else pa.string())
        self.risk_levels = list(model.risk_levels)
        self.risk_names = pa.array([r[0] for r in self.risk_levels], pa.string())

    # ---- features -------------------------------------------------------------------
    def features(self, batch: pa.RecordBatch) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """Return (x float64 (n, k), reasons, fields) -- reasons[i] is None for a good row."""
        n = batch.num_rows
        k = len(self.names)
        x = np.empty((n, k), dtype=np.float64)
        schema_names = batch.schema.names
        if ERROR_COL in schema_names:
            reasons = batch.column(ERROR_COL).to_pylist()
            fields = batch.column(FIELD_COL).to_pylist()
        else:
            reasons = [None] * n
            fields = [None] * n
        idx = {nm: i for i, nm in enumerate(schema_names)}
        for j, name in enumerate(self.names):
            if name not in idx:  # only possible for JSON lines (schema checked for files)
                x[:, j] = np.nan
                for i in range(n):
                    if reasons[i] is None:
                        reasons[i], fields[i] = f"missing feature {name}", name
                continue
            col = batch.column(idx[name])
            x[:, j] = self._numeric(col, name, reasons, fields)
        bad_rows = None
        if len(self.reject_cols):
            nanm = np.isnan(x[:, self.reject_cols])
            bad_rows = nanm.any(axis=1)
            if bad_rows.any():
                for i in np.flatnonzero(bad_rows):
                    if reasons[i] is None:
                        name = self.names[self.reject_cols[int(nanm[i].argmax())]]
                        reasons[i] = f"{name}: missing value (null/NaN) is not allowed for this feature"
                        fields[i] = name
        if self.has_range:
            with np.errstate(invalid="ignore"):
                out = (x < self.codec.mins) | (x > self.codec.maxs)
            rows = out.any(axis=1)
            for i in np.flatnonzero(rows):
                if reasons[i] is None:
                    c = int(out[i].argmax())
                    reasons[i] = (f"{self.names[c]}: {x[i, c]:g} is outside the allowed range "
                                  f"[{self.codec.mins[c]:g}, {self.codec.maxs[c]:g}]")
                    fields[i] = self.names[c]
        return x, reasons, fields

    def _numeric(self, col: pa.Array, name: str, reasons: list, fields: list) -> np.ndarray:
        t = col.type
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            if col.null_count:
                return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            return col.to_numpy(zero_copy_only=False)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            try:
                return pc.cast(pc.utf8_trim_whitespace(col), pa.float64()).to_numpy(
                    zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
            out = np.full(len(col), np.nan)
            for i, v in enumerate(col.to_pylist()):
                if v is None:
                    continue
                try:
                    out[i] = float(v)
                except ValueError:
                    if reasons[i] is None:
                        shown = v if len(v) <= 40 else v[:37] + "..."
                        reasons[i] = f"{name}: expected a number, got {shown!r}"
                        fields[i] = name
            return out
        if pa.types.is_null(t):
            return np.full(len(col), np.nan)
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)

    # ---- scoring --------------------------------------------------------------------
    def score(self, batch: pa.RecordBatch) -> pa.Table:
        """One output row per input row: ids, score, label[, risk_level], reject reason/field."""
        x, reasons, fields = self.features(batch)
        n = batch.num_rows
        ok = np.fromiter((r is None for r in reasons), dtype=bool, count=n)
        n_ok = int(ok.sum())
        score = np.full(n, np.nan)
        label_idx = np.zeros(n, dtype=np.int64)
        if n_ok:
            xs = x if n_ok == n else x[ok]
            s = self.model.score_array(np.ascontiguousarray(xs, dtype=self.dtype))
            sc = np.asarray(s.score, dtype=np.float64)
            if n_ok == n:
                score = sc
                if s.label_index is not None:
                    label_idx = np.asarray(s.label_index, dtype=np.int64)
            else:
                score[ok] = sc
                if s.label_index is not None:
                    label_idx[ok] = s.label_index
            has_label = s.label_index is not None
        else:
            has_label = self.model.task in ("binary_classification", "multiclass_classification")
        mask = None if n_ok == n else ~ok
        cols: dict[str, pa.Array] = {}
        for c in self.id_columns:
            cols[c] = batch.column(batch.schema.get_field_index(c))
        cols[SCORE] = pa.array(score, pa.float64(), mask=mask)
        if has_label:
            if self.classes is not None:
                cols[LABEL] = self.classes.take(pa.array(label_idx, mask=mask))
            else:
                cols[LABEL] = pa.array(label_idx, pa.int64(), mask=mask)
        if self.risk_levels and self.model.task == "binary_classification":
            cols[RISK] = self._risk(score)
        cols[ERROR_COL] = pa.array(reasons, pa.string())
        cols[FIELD_COL] = pa.array(fields, pa.string())
        return pa.table(cols)

    def _risk(self, p: np.ndarray) -> pa.Array:
        idx = np.full(len(p), -1, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            for k in range(len(self.risk_levels) - 1, -1, -1):  # highest min wins, like
                idx[p >= self.risk_levels[k][1]] = k             # Model.risk_level
        return self.risk_names.take(pa.array(idx, mask=idx < 0))


def split_scored(scored: pa.Table, first_row: int, meta: ScoringMeta) -> tuple[pa.Table, pa.Table]:
    """Scored rows → (output table, rejects table); both keep input order."""
    n = scored.num_rows
    rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    reasons = scored.column(ERROR_COL)
    n_bad = n - reasons.null_count
    out_cols = [c for c in scored.column_names if c not in (ERROR_COL, FIELD_COL)]
    out = scored.select(out_cols)
    if not meta.id_columns:
        out = out.add_column(0, ROW, rows)
    if n_bad:
        good = pc.is_null(reasons)
        rejects = pa.table({ROW: rows, **{c: scored.column(c) for c in meta.id_columns},
                            "reason": reasons, "field": scored.column(FIELD_COL)})
        rejects = rejects.filter(pc.invert(good))
        out = out.filter(good)
    else:
        rejects = None
    m = out.num_rows
    out = out.append_column(MODEL_NAME, _const_dict(meta.model_name, m))
    out = out.append_column(MODEL_VERSION, _const_dict(meta.model_version, m))
    ts = pa.array(np.full(m, np.datetime64(meta.scored_at.replace(tzinfo=None), "us")),
                  pa.timestamp("us", tz="UTC"))
    out = out.append_column(SCORED_AT, ts)
    if rejects is None:
        rejects = _empty_rejects(scored, meta)
    return out, rejects


def _const_dict(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _empty_rejects(scored: pa.Table, meta: ScoringMeta) -> pa.Table:
    return pa.table({ROW: pa.array([], pa.int64()),
                     **{c: pa.array([], scored.schema.field(c).type) for c in meta.id_columns},
                     "reason": pa.array([], pa.string()), "field": pa.array([], pa.string())})


def rejects_to_jsonl(rejects: pa.Table) -> bytes:
    if rejects.num_rows == 0:
        return b""
    lines = []
    for row in rejects.to_pylist():
        lines.append(json.dumps(row, default=str, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def parse_scoring_date(value: str | None) -> dt.datetime:
    if not value:
        return utc_now()
    try:
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        from edge_runtime.errors import ValidationError

        raise ValidationError(f"scoring date {value!r} is not an ISO date/time", field="scoring_date") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.astimezone(dt.timezone.utc)


def to_jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    return v
