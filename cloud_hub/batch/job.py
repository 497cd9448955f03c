"""One batch job, start to finish: resolve the model, read, score, write, report.

``run_batch(spec)`` is used by ``cloud-hub batch run`` and by the hub's job
service; progress and cancellation come through callbacks so the CLI can show
a progress bar and the service can persist progress and honour cancel.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.batch.io import InputReader
from cloud_hub.batch.local import available_cores, run_local
from cloud_hub.batch.output import PartWriter
from cloud_hub.batch.scoring import BatchScorer, ScoringMeta, parse_scoring_date, split_scored
from edge_runtime.engines import EngineOptions
from edge_runtime.errors import ValidationError
from edge_runtime.model import Model

ENGINES = ("local", "ray")


@dataclass
class BatchSpec:
    model: str  # REF (name, name@alias, name:version) or a bundle path
    input: str
    output: str
    id_columns: list[str] = field(default_factory=list)
    batch_size: int = 65536
    engine: str = "local"
    workers: int | None = None  # default: the cores this process may use
    processes: bool = False  # local engine: score in processes instead of threads
    rejects: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    scoring_date: str | None = None
    overwrite: bool = False
    resume: bool = True
    public_keys: list[str] = field(default_factory=list)  # trusted keys for a bundle path

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise ValidationError(
                f"unknown engine {self.engine!r}: use local or ray", field="engine"
            )
        if self.batch_size < 1 or self.batch_size > 10_000_000:
            raise ValidationError("batch size must be between 1 and 10,000,000", field="batch_size")
        if self.workers is not None and self.workers < 1:
            raise ValidationError("workers must be at least 1", field="workers")
        if len(set(self.id_columns)) != len(self.id_columns):
            raise ValidationError("id columns are repeated", field="id_column")
        if Path(self.input).absolute() == Path(self.output).absolute():
            raise ValidationError("the output must not overwrite the input", field="output")


@dataclass
class Progress:
    rows_done: int
    rows_total: int | None
    rows_out: int
    rows_rejected: int
    batches: int


@dataclass
class BatchResult:
    status: str  # succeeded | cancelled | interrupted
    output: str
    rejects: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    resumed_from_batch: int
    seconds: float
    model: dict[str, Any]
    engine: str
    workers: int

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


@dataclass
class ResolvedModel:
    model: Model
    bundle_path: Path
    ref: str


def resolve_model(ref: str, hub: Any = None, *, threads: int = 1,
                  public_keys: list[str] | None = None) -> ResolvedModel:
    """A bundle path (verified against the trusted keys first: :mod:`cloud_hub.trust`), or a
    registry REF resolved through the hub's registry (its artifact checked against its sha256)."""
    options = EngineOptions(intra_op_threads=threads, inter_op_threads=1)
    p = Path(ref)
    if p.exists():
        from cloud_hub.trust import load_trusted_bundle

        settings = getattr(hub, "settings", None)
        model = load_trusted_bundle(p, public_keys=public_keys or (), settings=settings,
                                    options=options)
        return ResolvedModel(model, p.absolute(), ref)
    own = hub is None
    if own:
        from cloud_hub.hub import Hub

        hub = Hub()
    try:
        registry = getattr(hub, "registry", None)
        if registry is None:
            raise ValidationError(
                f"{ref!r} is not a bundle path and this hub has no model registry", field="model"
            )
        mv = registry.resolve(ref)
        path = Path(registry.artifact_path(mv))
        return ResolvedModel(Model.load(path, options), path, ref)
    finally:
        if own:
            hub.close()


def run_batch(
    spec: BatchSpec,
    *,
    hub: Any = None,
    resolved: ResolvedModel | None = None,
    on_start: Callable[[Progress, dict[str, Any]], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancelled: Callable[[], bool | str] = lambda: False,
) -> BatchResult:
    """Run one job. ``cancelled()`` is polled between batches: truthy stops the job and
    discards its partial output; the string ``"interrupt"`` stops it but keeps the
    checkpoint so a rerun resumes (used when the hub shuts down)."""
    spec.check()
    t0 = time.perf_counter()
    rm = resolved or resolve_model(spec.model, hub, public_keys=spec.public_keys)
    model = rm.model
    if model.codec is None:
        raise ValidationError(
            f"model {model.name}:{model.version} takes raw tensors; batch jobs need named features",
            field="model",
        )
    features = list(model.codec.names)
    dtypes = {f.name: f.dtype for f in model.manifest.inputs.features}
    reader = InputReader(
        spec.input, features, spec.id_columns, spec.batch_size, spec.input_format, dtypes
    )
    fingerprint = {
        "input": reader.info.fingerprint(),
        "model": model.digest,
        "batch_size": spec.batch_size,
        "id_columns": spec.id_columns,
        "scoring_date": spec.scoring_date,
    }
    writer = PartWriter(
        spec.output,
        spec.rejects,
        fingerprint,
        parse_scoring_date(spec.scoring_date),
        fmt=spec.output_format,
        overwrite=spec.overwrite,
        resume=spec.resume and spec.engine == "local",
    )
    try:
        meta = ScoringMeta(model.name, model.version, writer.scored_at, tuple(spec.id_columns))
        workers = spec.workers or available_cores()
        total = reader.info.total_rows
        skip = writer.resumed_from
        progress = Progress(
            writer.cp.rows_in, total, writer.cp.rows_out, writer.cp.rows_rejected, writer.cp.batches
        )
        model_info = {"name": model.name, "version": model.version, "sha256": model.digest}
        if on_start:
            on_start(progress, model_info)

        def write(i: int, batch_rows: int, scored) -> None:
            out, rej = split_scored(scored, writer.cp.rows_in, meta)
            writer.write(i, batch_rows, out, rej)
            progress.rows_done = writer.cp.rows_in
            progress.rows_out = writer.cp.rows_out
            progress.rows_rejected = writer.cp.rows_rejected
            progress.batches = writer.cp.batches
            if on_progress:
                on_progress(progress)

        if spec.engine == "ray":
            from cloud_hub.batch.ray_engine import run_ray

            finished = run_ray(
                reader,
                rm.bundle_path,
                spec,
                workers=workers,
                write=lambda i, n, s: write(i, n, s),
                cancelled=cancelled,
            )
        else:
            scorer = BatchScorer(model, spec.id_columns)
            finished = run_local(
                reader.batches(),
                scorer,
                skip=skip,
                workers=workers,
                write=lambda i, b, s: write(i, b.num_rows, s),
                cancelled=cancelled,
                processes=rm.bundle_path if spec.processes else None,
            )
        if not finished:
            if cancelled() == "interrupt":
                status = "interrupted"
            else:
                writer.discard()
                status = "cancelled"
        else:
            if writer.cp.batches == 0:
                raise ValidationError(f"input {spec.input!r} has no rows", field="input")
            writer.finalize()
            status = "succeeded"
        return BatchResult(
            status,
            str(writer.output),
            str(writer.rejects_path),
            writer.cp.rows_in,
            writer.cp.rows_out,
            writer.cp.rows_rejected,
            skip,
            time.perf_counter() - t0,
            model_info,
            spec.engine,
            workers,
        )
    finally:
        writer.release()


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
