"""Batch inference: score whole files (Parquet, CSV, JSON lines) with a bundle.

The input is read as a stream of Arrow record batches (never the whole file),
each batch is turned into the model's feature matrix in contract order and
scored through :meth:`edge_runtime.Model.score_array` -- the same data plane as
``/predict`` -- and the results are written as checkpointed parts that are
merged into the output file with one atomic rename at the end.

    reader (io.py) ──► scorer (scoring.py) ──► writer/checkpoint (output.py)
                 local engine (local.py: threads) | Ray Data (ray_engine.py)

``run_batch`` in :mod:`cloud_hub.batch.job` is the entry point used by the CLI
and by the hub's job service.
"""

from cloud_hub.batch.job import BatchResult, BatchSpec, run_batch

__all__ = ["BatchResult", "BatchSpec", "run_batch"]
