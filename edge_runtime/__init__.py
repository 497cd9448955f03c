"""edge_runtime: the on-device inference library and daemon.

Import what apps need from here::

    from edge_runtime import Model, read_bundle
    model = Model.load("bundles/churn-1.0.0")
    model.predict([{"tenure": 3, "charges": 42.0}])

An app that embeds the whole device runtime (store, slots, observers) uses
``Daemon``; ``ModelStore`` and ``load_settings`` are here too (imported lazily).
"""

from edge_runtime.bundle import Bundle, read_bundle, verify_bundle
from edge_runtime.errors import BundleError, EdgeError, EngineError, ValidationError
from edge_runtime.model import Model

__version__ = "0.1.0"

_LAZY = {"Daemon": "edge_runtime.daemon", "ModelStore": "edge_runtime.store",
         "load_settings": "edge_runtime.settings", "EdgeSettings": "edge_runtime.settings"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")


__all__ = [
    "Bundle",
    "BundleError",
    "Daemon",
    "EdgeSettings",
    "ModelStore",
    "load_settings",
    "EdgeError",
    "EngineError",
    "Model",
    "ValidationError",
    "read_bundle",
    "verify_bundle",
    "__version__",
]
