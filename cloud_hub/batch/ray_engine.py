"""The Ray Data engine: the same job, scored by a pool of Ray actors.

Each actor loads the bundle once (its files travel through the object store,
so a cluster needs no shared disk) and runs the same :class:`BatchScorer` as
the local engine, so both engines give the same rows. The driver keeps input
order (``preserve_order``) and writes through the same checkpointed writer.
Ray jobs restart cleanly instead of resuming (Ray Data has no row offset to
resume from): a rerun discards the parts of an interrupted Ray run.

``RAY_ADDRESS`` selects a cluster; without it a local Ray instance is started
with the job's worker count and shut down at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from cloud_hub.batch.io import InputReader, csv_options, parse_jsonl_lines
from edge_runtime.errors import EdgeError


class RayEngineError(EdgeError):
    code = "ray_error"


def _bundle_files(path: Path) -> dict[str, bytes]:
    if path.is_file():  # a .tar bundle
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


class RayScorer:
    """Ray actor: materialise the bundle, load the model once, score batches."""

    def __init__(
        self, files_ref: Any, id_columns: list[str], features: list[str], fmt: str
    ) -> None:
        import ray

        from cloud_hub.batch.scoring import BatchScorer
        from edge_runtime.engines import EngineOptions
        from edge_runtime.model import Model

        files = ray.get(files_ref) if isinstance(files_ref, ray.ObjectRef) else files_ref
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudhub-ray-bundle-")
        root = Path(self._tmp.name)
        for rel, data in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        target = root if (root / "manifest.json").exists() else root / next(iter(files))
        self.model = Model.load(target, EngineOptions(intra_op_threads=1, inter_op_threads=1))
        self.scorer = BatchScorer(self.model, id_columns)
        self.features, self.id_columns, self.fmt = features, id_columns, fmt

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.fmt == "jsonl":
            batch = parse_jsonl_lines(
                table.column("text").to_pylist(), self.features, self.id_columns,
                {f.name: f.dtype for f in self.model.manifest.inputs.features},
            )
        else:
            batches = table.combine_chunks().to_batches()
            batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
        return self.scorer.score(batch)


def run_ray(
    reader: InputReader,
    bundle_path: Path,
    spec,
    *,
    workers: int,
    write: Callable[[int, int, pa.Table], None],
    cancelled: Callable[[], bool],
) -> bool:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - ray is an optional extra
        raise RayEngineError(
            "the ray engine needs Ray: pip install 'edgefleet[ray]'", field="engine"
        ) from exc
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        path = str(reader.info.path)
        if reader.format == "parquet":
            ds = ray.data.read_parquet(path, columns=reader.columns)
        elif reader.format == "csv":
            read, convert = csv_options(reader.columns, spec.batch_size)
            ds = ray.data.read_csv(path, read_options=read, convert_options=convert)
        else:
            ds = ray.data.read_text(path)
        # Leave one CPU for the read tasks: actors holding every CPU would starve them.
        cpus = float(ray.cluster_resources().get("CPU", workers))
        actor_cpus = min(1.0, max(0.1, (cpus - 1) / workers)) if cpus > 1 else 0.5
        files_ref = ray.put(_bundle_files(Path(bundle_path)))
        ds = ds.map_batches(
            RayScorer,
            fn_constructor_kwargs={
                "files_ref": files_ref,
                "id_columns": list(reader.id_columns),
                "features": list(reader.features),
                "fmt": reader.format,
            },
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=actor_cpus,
        )
        batches = ds.iter_batches(
            batch_size=spec.batch_size, batch_format="pyarrow", prefetch_batches=2
        )
        for i, table in enumerate(batches):
            if cancelled():
                return False
            write(i, table.num_rows, table)
        return True
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EdgeError):
            raise cause from exc
        raise RayEngineError(f"Ray job failed: {str(exc).splitlines()[0]}") from exc
    finally:
        if started:
            ray.shutdown()
