"""The device path stays lean: no FastAPI, SQLAlchemy or pandas on its import path."""

from __future__ import annotations

import subprocess
import sys


def test_device_modules_do_not_import_hub_libraries():
    code = (
        "import sys\n"
        "import edge_runtime, edge_runtime.cli, edge_runtime.daemon, edge_runtime.store, "
        "edge_runtime.local_api, edge_runtime.settings, edge_runtime.bench\n"
        "from edge_runtime.cli import main\n"
        "bad = sorted(m for m in ('fastapi', 'sqlalchemy', 'pandas', 'uvicorn', 'starlette') "
        "if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
