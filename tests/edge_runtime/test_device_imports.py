"""The device path stays lean: no FastAPI, SQLAlchemy or pandas on its import path."""

from __future__ import annotations

import subprocess
import sys


def test_device_modules_do_not_import_hub_libraries():
    code = (
        "import sys\n"
        "import edge_runtime, edge_runtime.cli, edge_runtime.daemon, edge_runtime.store, "
        "edge_runtime.local_api, edge_runtime.settings, edge_runtime.bench, "
        "edge_runtime.engines.onnx, edge_runtime.engines.tflite\n"
        "from edge_runtime.cli import main\n"
        "from edge_runtime.engines.tflite import load_interpreter_class\n"
        "load_interpreter_class()\n"
        # hub libraries, and the converters' (a device never needs onnx/sklearn/coremltools)
        "bad = sorted(m for m in ('fastapi', 'sqlalchemy', 'pandas', 'uvicorn', 'starlette', "
        "'onnx', 'sklearn', 'skl2onnx', 'coremltools', 'converters') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
