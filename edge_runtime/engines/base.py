"""The engine interface: load a model file, run named numpy tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge_runtime.manifest import TensorSpec


@dataclass(frozen=True)
class EngineOptions:
    """Run-time knobs, usually taken from the device profile."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, best first
    warmup_runs: int = 2


class Engine:
    """Load a model file once; ``run`` a dict of named arrays; ``close`` frees it."""

    format: ClassVar[str] = ""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, path: str | Path, options: EngineOptions | None = None) -> None:
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return outputs in the order of ``self.outputs``."""
        raise NotImplementedError

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def describe(self) -> dict:
        return {"format": self.format}

    def close(self) -> None:  # pragma: no cover - engines free on GC too
        pass
