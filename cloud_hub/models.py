"""Loaded-model cache: ``get(ref) -> (ModelVersion, Model)``.

Models are keyed by bundle digest (one engine per distinct bundle, whatever
aliases point at it) and evicted least-recently-used past ``max_models``.
Resolving a reference (``name@alias`` → version) hits the database, so
resolutions are cached for ``resolve_ttl_s``; a registry change made through
this process drops them at once, a change made by another replica is seen
after at most ``resolve_ttl_s``.

The hot path (:meth:`ModelCache.peek`) is a dict lookup; loading happens once
per digest under a per-digest lock so concurrent first requests load once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from edge_runtime.engines import EngineOptions
from edge_runtime.model import Model

if TYPE_CHECKING:
    from cloud_hub.registry import ModelVersion, Registry

log = logging.getLogger("cloud_hub.models")


class ModelCache:
    def __init__(self, registry: Registry, options: EngineOptions | None = None, *,
                 max_models: int = 16, resolve_ttl_s: float = 1.0) -> None:
        self.registry = registry
        self.options = options or EngineOptions()
        self.max_models = max_models
        self.resolve_ttl_s = resolve_ttl_s
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._refs: dict[str, tuple[float, ModelVersion]] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        registry.on_change(self.invalidate)

    # ---- resolution ---------------------------------------------------------------------
    def resolve(self, ref: str) -> ModelVersion:
        hit = self._refs.get(ref)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.resolve_ttl_s:
            return hit[1]
        mv = self.registry.resolve(ref)
        self._refs[ref] = (now, mv)
        return mv

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached resolutions (of one model name, or all)."""
        if name is None:
            self._refs.clear()
            return
        for ref in [r for r in self._refs if r == name or r.startswith((name + "@", name + ":"))]:
            self._refs.pop(ref, None)

    # ---- models -------------------------------------------------------------------------
    def peek(self, ref: str) -> tuple[ModelVersion, Model] | None:
        """Non-blocking fast path: the pair if the ref is resolved and its model loaded."""
        hit = self._refs.get(ref)
        if hit is None or time.monotonic() - hit[0] >= self.resolve_ttl_s:
            return None
        model = self._models.get(hit[1].digest)
        if model is None:
            return None
        return hit[1], model

    def get(self, ref: str) -> tuple[ModelVersion, Model]:
        """Resolve ``ref`` and return its loaded model (loading it if needed)."""
        mv = self.resolve(ref)
        return mv, self.model(mv)

    def model(self, mv: ModelVersion) -> Model:
        model = self._models.get(mv.digest)
        if model is not None:
            if len(self._models) > 1:
                with self._lock:
                    if mv.digest in self._models:
                        self._models.move_to_end(mv.digest)
            return model
        with self._lock:
            load_lock = self._load_locks.setdefault(mv.digest, threading.Lock())
        with load_lock:
            model = self._models.get(mv.digest)
            if model is not None:
                return model
            t0 = time.perf_counter()
            model = Model.load(self.registry.open_bundle(mv), self.options)
            log.info("loaded %s:%s (%s) in %.0f ms", mv.name, mv.version, mv.digest[:12],
                     (time.perf_counter() - t0) * 1000)
            with self._lock:
                self._models[mv.digest] = model
                while len(self._models) > self.max_models:
                    _, old = self._models.popitem(last=False)
                    old.close()
        return model

    def loaded(self) -> list[str]:
        return list(self._models)

    def close(self) -> None:
        with self._lock:
            for m in self._models.values():
                m.close()
            self._models.clear()
            self._refs.clear()
