"""The local engine: reading, scoring and writing overlap.

One reader thread pulls record batches from the file into a bounded queue;
``workers`` scorers run the batches through the model; the calling thread
writes the results in input order. At most ``2 * workers`` batches are in
flight, which bounds memory whatever the input size.

Scorers are threads by default (ONNX Runtime releases the GIL, start-up is
free). With ``processes=True`` they are processes (spawned, each loading the
bundle once): batches and results cross a pipe (Arrow IPC pickling), which
costs a copy, but the Python parts of scoring no longer serialise on the GIL —
the better choice for large jobs on many cores.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from cloud_hub.batch.scoring import BatchScorer

_END = object()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_PROC_SCORER: BatchScorer | None = None


def _proc_init(bundle_path: str, id_columns: list[str]) -> None:
    global _PROC_SCORER
    from edge_runtime.engines import EngineOptions
    from edge_runtime.model import Model

    model = Model.load(bundle_path, EngineOptions(intra_op_threads=1, inter_op_threads=1))
    _PROC_SCORER = BatchScorer(model, id_columns)


def _proc_score(batch: pa.RecordBatch) -> pa.Table:
    return _PROC_SCORER.score(batch)


def run_local(
    batches: Iterator[pa.RecordBatch],
    scorer: BatchScorer,
    *,
    skip: int,
    workers: int,
    write: Callable[[int, pa.RecordBatch, pa.Table], None],
    cancelled: Callable[[], bool],
    processes: Path | None = None,
) -> bool:
    """Score every batch after the first ``skip``; call ``write(i, batch, scored)`` in order.

    ``processes``: a bundle path to score in ``workers`` spawned processes instead of
    threads. Returns False when stopped by ``cancelled()``.
    """
    workers = max(1, workers)
    limit = 2 * workers
    q: queue.Queue = queue.Queue(maxsize=limit)
    stop = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            for i, b in enumerate(batches):
                if stop.is_set():
                    return
                if i < skip:
                    continue
                while not stop.is_set():
                    try:
                        q.put((i, b), timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaced in the writer thread
            failure.append(exc)
        finally:
            while not stop.is_set():
                try:
                    q.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    continue

    reader = threading.Thread(target=read, name="batch-reader", daemon=True)
    reader.start()
    pending: deque[tuple[int, pa.RecordBatch, Future]] = deque()
    ok = True
    if processes is not None:
        import multiprocessing

        pool_cm = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_proc_init,
            initargs=(str(processes), list(scorer.id_columns)),
        )
        score = _proc_score
    else:
        pool_cm = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-score")
        score = scorer.score
    with pool_cm as pool:
        try:
            done_reading = False
            while not done_reading or pending:
                if cancelled():
                    ok = False
                    break
                if not done_reading and len(pending) < limit:
                    item = q.get()
                    if item is _END:
                        done_reading = True
                        if failure:
                            raise failure[0]
                    else:
                        i, b = item
                        pending.append((i, b, pool.submit(score, b)))
                    # write what is ready without blocking the next read
                    while pending and pending[0][2].done():
                        i, b, f = pending.popleft()
                        write(i, b, f.result())
                    continue
                i, b, f = pending.popleft()
                write(i, b, f.result())
        finally:
            stop.set()
            for _, _, f in pending:
                f.cancel()
            reader.join(timeout=5)
    return ok
