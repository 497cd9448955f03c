"""Samples of the user's data: feature rows (CSV / Parquet) or raw tensors (.npy / .npz).

Converters need a sample to fill in the input contract, draw golden vectors,
calibrate static INT8 quantization and check variants. A :class:`Sample`
holds the numeric feature matrix in a known column order plus the optional
label column. Bad samples are refused with :class:`ValidationError` naming the
column (``field``) and the reason: missing columns, non-numeric columns, an
empty file, a file we cannot parse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ValidationError

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".tsv")
TENSOR_SUFFIXES = (".npy", ".npz")


@dataclass
class Sample:
    """A numeric sample: ``x`` is (n, n_features) for feature rows, (n, ...) for tensors."""

    x: np.ndarray
    names: list[str] = field(default_factory=list)  # feature names (empty for tensors)
    y: np.ndarray | None = None  # labels, when a label column was given
    dtypes: dict[str, str] = field(default_factory=dict)  # contract dtype per feature
    source: str = "memory"
    # text features (dtype "string"): x holds the index into these sorted categories
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_tensor(self) -> bool:
        return not self.names

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, names: Sequence[str]) -> Sample:
        """The same rows with columns re-ordered to ``names`` (missing → clear error)."""
        if list(names) == self.names:
            return self
        missing = [n for n in names if n not in self.names]
        if missing:
            shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
            raise ValidationError(f"sample {self.source} is missing column(s) the model needs: "
                                  f"{shown}", field=f"sample.{missing[0]}", missing=missing)
        idx = [self.names.index(n) for n in names]
        return Sample(self.x[:, idx], list(names), self.y,
                      {n: self.dtypes.get(n, "float32") for n in names}, self.source,
                      {n: c for n, c in self.categories.items() if n in names})

    def recode(self, features: Sequence[Any]) -> Sample:
        """Text columns re-coded to a bundle's categories (manifest ``inputs.features``): this
        sample's own codes index *its* sorted categories; a category the bundle does not list
        becomes -1 (unseen)."""
        x = None
        for f in features:
            if getattr(f, "dtype", None) != "string" or f.name not in self.names:
                continue
            mine = self.categories.get(f.name, [])
            want = {c: i for i, c in enumerate(f.categories or [])}
            table = np.array([want.get(c, -1) for c in mine] + [np.nan], dtype=np.float64)
            j = self.names.index(f.name)
            x = self.x.copy() if x is None else x
            col = x[:, j]
            idx = np.where(np.isnan(col), len(mine), col).astype(int)
            x[:, j] = table[np.clip(idx, 0, len(mine))]
        if x is None:
            return self
        cats = dict(self.categories)
        for f in features:
            if getattr(f, "dtype", None) == "string":
                cats[f.name] = list(f.categories or [])
        return Sample(x, self.names, self.y, self.dtypes, self.source, cats)

    def head(self, n: int) -> Sample:
        return Sample(self.x[:n], self.names, None if self.y is None else self.y[:n],
                      self.dtypes, self.source, self.categories)

    def rows(self, idx: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Feature rows as JSON-ready dicts (ints stay ints for integer features, booleans
        true/false, text categories their text)."""
        x = self.x if idx is None else self.x[list(idx)]
        out = []
        for r in x:
            out.append({n: self.value(n, v) for n, v in zip(self.names, r.tolist())})
        return out

    def value(self, name: str, v: float) -> Any:
        """One cell as the JSON value a client sends."""
        dt = self.dtypes.get(name)
        if math.isnan(v):  # a missing value
            return None
        if dt == "string":
            cats = self.categories.get(name, [])
            return cats[int(v)] if 0 <= v < len(cats) else "__unseen_category__"
        if dt in ("int64", "int32"):
            return int(v)
        if dt == "bool":
            return bool(v)
        return float(v)

    def frame(self, x: np.ndarray | None = None):
        """The rows as a pandas DataFrame of the user's types (text as text), for the source
        model's reference run."""
        import pandas as pd

        x = self.x if x is None else x
        cols = {}
        for j, n in enumerate(self.names):
            dt = self.dtypes.get(n)
            if dt == "string":
                cats = np.asarray(self.categories.get(n, []) + ["__unseen_category__"],
                                  dtype=object)
                c = x[:, j]
                codes = np.where(np.isnan(c), -2, c).astype(int)
                col = np.where(codes >= 0, cats[np.clip(codes, 0, len(cats) - 1)],
                               cats[-1]).astype(object)
                col[codes == -2] = None
                cols[n] = col
            elif dt == "bool" and not np.isnan(x[:, j]).any():
                cols[n] = x[:, j].astype(bool)
            else:
                cols[n] = x[:, j]
        return pd.DataFrame(cols, columns=self.names)


def load_sample(source: Any, *, label_column: str | None = None,
                feature_names: Sequence[str] | None = None) -> Sample:
    """Turn a path, DataFrame, Arrow table, ndarray, ``(X, y)`` or Sample into a Sample.

    ``label_column`` is removed from the features and kept as ``y``;
    ``feature_names`` (e.g. the model's ``feature_names_in_``) selects and
    orders the features; for a bare ndarray it names the columns.
    """
    if isinstance(source, Sample):
        sample = source
    elif isinstance(source, (str, Path)):
        sample = _load_path(Path(source), label_column, feature_names)
        label_column = None
    elif isinstance(source, tuple) and len(source) == 2:
        if isinstance(source[0], (np.ndarray, list)):
            sample = _from_array(source[0], feature_names)
        else:  # a DataFrame / Arrow table keeps its column names
            sample = _from_table(_to_arrow(source[0]), "DataFrame", None)
        sample.y = np.asarray(source[1])
        if len(sample.y) != len(sample):
            raise ValidationError(f"sample labels have {len(sample.y)} rows, features "
                                  f"{len(sample)}", field="sample.labels")
    elif isinstance(source, np.ndarray):
        sample = _from_array(source, feature_names)
    elif hasattr(source, "to_pyarrow") or hasattr(source, "column_names") or hasattr(source, "columns"):
        sample = _from_table(_to_arrow(source), "DataFrame", label_column)
        label_column = None
    else:
        raise ValidationError(f"sample must be a CSV/Parquet/.npy path, a DataFrame or an array, "
                              f"not {type(source).__name__}", field="sample")
    if label_column is not None:
        if label_column not in sample.names:
            raise ValidationError(f"label column {label_column!r} is not in the sample "
                                  f"(columns: {', '.join(sample.names[:12])})",
                                  field="label_column")
        i = sample.names.index(label_column)
        keep = [j for j in range(len(sample.names)) if j != i]
        sample = Sample(sample.x[:, keep], [sample.names[j] for j in keep], sample.x[:, i],
                        {n: d for n, d in sample.dtypes.items() if n != label_column},
                        sample.source, sample.categories)
    if feature_names is not None and not sample.is_tensor:
        sample = sample.select([str(n) for n in feature_names])
    if len(sample) == 0:
        raise ValidationError(f"sample {sample.source} has no rows", field="sample")
    return sample


# ---- readers ------------------------------------------------------------------------

def _load_path(path: Path, label_column: str | None,
               feature_names: Sequence[str] | None = None) -> Sample:
    if not path.exists():
        raise ValidationError(f"sample file not found: {path}", field="sample")
    suffix = path.suffix.lower()
    if suffix in TENSOR_SUFFIXES:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValidationError(f"cannot read sample {path}: {exc}", field="sample") from exc
        y = None
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.keys())
            xk = "x" if "x" in keys else keys[0]
            x = data[xk]
            yk = label_column or ("y" if "y" in keys else None)
            if yk is not None:
                if yk not in keys:
                    raise ValidationError(f"label array {yk!r} is not in {path.name} "
                                          f"(arrays: {', '.join(keys)})", field="label_column")
                y = data[yk]
        else:
            x = data
        # a bare 2-D array holds the features in contract order when the widths agree
        names = feature_names if (feature_names is not None and np.ndim(x) == 2
                                  and np.shape(x)[1] == len(feature_names)) else None
        s = _from_array(x, names, source=str(path))
        s.y = y
        return s
    if suffix not in TABLE_SUFFIXES:
        raise ValidationError(f"sample {path.name}: unknown file type {suffix or '(none)'}; "
                              "use .csv, .parquet or .npy/.npz", field="sample")
    import pyarrow as pa

    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            from pyarrow import csv

            opts = csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = csv.read_csv(path, parse_options=opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValidationError(f"cannot read sample {path.name}: {msg}", field="sample") from exc
    return _from_table(table, str(path), label_column)


def _to_arrow(obj: Any):
    import pyarrow as pa

    if isinstance(obj, pa.Table):
        return obj
    try:
        return pa.Table.from_pandas(obj, preserve_index=False)
    except Exception as exc:  # pandas/arrow conversion errors are many
        raise ValidationError(f"cannot read the sample DataFrame: {exc}", field="sample") from exc


def _from_table(table, source: str, label_column: str | None) -> Sample:
    import pyarrow as pa
    import pyarrow.types as pt

    names = [str(n) for n in table.column_names]
    if not names:
        raise ValidationError(f"sample {source} has no columns", field="sample")
    cols, dtypes, kept, y = [], {}, [], None
    categories: dict[str, list[str]] = {}
    for name, col in zip(names, table.columns):
        if name == label_column:
            y = np.asarray(col.to_pylist())
            if pt.is_integer(col.type) or pt.is_floating(col.type) or pt.is_boolean(col.type):
                y = col.to_numpy(zero_copy_only=False)
            continue
        t = col.type
        if pt.is_boolean(t):
            dtypes[name] = "bool"
            arr = col.cast(pa.int8()).to_numpy(zero_copy_only=False).astype(np.float64)
        elif pt.is_integer(t):
            dtypes[name] = "int64"
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pt.is_floating(t) or pt.is_decimal(t):
            dtypes[name] = "float32"
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pt.is_null(t):
            dtypes[name] = "float32"
            arr = np.full(len(col), np.nan)
        elif pt.is_string(t) or pt.is_large_string(t) or (
                pt.is_dictionary(t) and (pt.is_string(t.value_type)
                                         or pt.is_large_string(t.value_type))):
            # a text category: codes into its sorted categories (NaN where missing)
            vals = col.cast(pa.string()) if pt.is_dictionary(t) else col
            py = vals.to_pylist()
            cats = sorted({v for v in py if v is not None})
            index = {c: float(i) for i, c in enumerate(cats)}
            dtypes[name] = "string"
            categories[name] = cats
            arr = np.array([np.nan if v is None else index[v] for v in py], dtype=np.float64)
        else:
            # Kept aside: it only matters if the model needs this column (select()).
            dtypes[name] = f"!{t}"
            arr = None
        cols.append(arr)
        kept.append(name)
    if label_column is not None and y is None:
        raise ValidationError(f"label column {label_column!r} is not in the sample "
                              f"(columns: {', '.join(names[:12])})", field="label_column")
    n = table.num_rows
    x = np.empty((n, len(kept)), dtype=np.float64)
    bad = {}
    for j, arr in enumerate(cols):
        if arr is None:
            x[:, j] = np.nan
            bad[kept[j]] = dtypes[kept[j]][1:]
        else:
            x[:, j] = arr
    s = _CheckedSample(x, kept, y, dtypes, source, categories)
    s.bad = bad
    return s


class _CheckedSample(Sample):
    """A table sample that remembers non-numeric columns until they are selected."""

    bad: dict[str, str]

    def select(self, names: Sequence[str]) -> Sample:
        self._check_numeric(names)
        sel = Sample.select(self, names)
        return Sample(sel.x, sel.names, sel.y, sel.dtypes, sel.source, sel.categories)

    def _check_numeric(self, names: Sequence[str]) -> None:
        for n in names:
            if n in self.bad:
                raise ValidationError(f"sample column {n!r} has type {self.bad[n]}; model features "
                                      "must be numbers, booleans or text", field=f"sample.{n}",
                                      dtype=self.bad[n])

    def numeric(self) -> Sample:
        self._check_numeric(self.names)
        return Sample(self.x, self.names, self.y, self.dtypes, self.source, self.categories)


def _from_array(x: Any, names: Sequence[str] | None, source: str = "array") -> Sample:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"sample array is not numeric: {exc}", field="sample") from exc
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim > 2:
        return Sample(arr, [], None, {}, source)
    if names is None:
        names = [f"f{i}" for i in range(arr.shape[1])]
    names = [str(n) for n in names]
    if len(names) != arr.shape[1]:
        raise ValidationError(f"sample has {arr.shape[1]} columns but {len(names)} feature names "
                              "were given", field="sample")
    return Sample(arr, names, None, {n: "float32" for n in names}, source)


def finalize(sample: Sample) -> Sample:
    """Refuse non-numeric feature columns that are still in the sample."""
    if isinstance(sample, _CheckedSample):
        return sample.numeric()
    return sample
