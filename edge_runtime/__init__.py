"""edge_runtime: the on-device inference library and daemon.

Import what apps need from here::

    from edge_runtime import Model, read_bundle
    model = Model.load("bundles/churn-1.0.0")
    model.predict([{"tenure": 3, "charges": 42.0}])
"""

from edge_runtime.bundle import Bundle, read_bundle, verify_bundle
from edge_runtime.errors import BundleError, EdgeError, EngineError, ValidationError
from edge_runtime.model import Model

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
    "EdgeError",
    "EngineError",
    "Model",
    "ValidationError",
    "read_bundle",
    "verify_bundle",
    "__version__",
]
