"""A real MLflow tracking server for the import tests.

MLflow is never a dependency of the hub (it pins pyarrow below ours): a fixture
builds a separate virtualenv with ``mlflow`` (and our scikit-learn / numpy
versions, so the logged pickle loads here), cached under
``$EDGEFLEET_CACHE`` or ``~/.cache`` between runs (CI runs on this machine in a
fresh clone, so the cache survives there too), starts ``mlflow server`` with a
SQLite backend on a free port (stopped by its PID) and runs :data:`LOG_SCRIPT`
with that venv's Python to log and register models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES, free_port

MLFLOW_SPEC = "mlflow==3.17.2"


def _requirements() -> list[str]:
    import numpy
    import sklearn

    return [MLFLOW_SPEC, f"scikit-learn=={sklearn.__version__}", f"numpy=={numpy.__version__}"]


def mlflow_venv() -> Path:
    """The cached venv with mlflow (created on first use: a few minutes)."""
    reqs = _requirements()
    tag = hashlib.sha256(json.dumps([sys.version_info[:2], reqs]).encode()).hexdigest()[:12]
    root = Path(os.environ.get("EDGEFLEET_CACHE", Path.home() / ".cache"))
    venv = root / f"edgefleet-mlflow-venv-{tag}"
    if (venv / "ok").is_file():
        return venv
    tmp = venv.with_name(venv.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=300)
        subprocess.run(
            [str(tmp / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *reqs],
            check=True,
            timeout=1500,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        out = getattr(exc, "stderr", b"") or b""
        msg = f"cannot build the mlflow virtualenv: {exc} {out.decode(errors='replace')[-500:]}"
        if REQUIRE_SERVICES:
            pytest.fail(msg)
        pytest.skip(msg)
    # a venv is not relocatable: build in place under the temporary name, then move the
    # finished one only if nobody else did meanwhile (scripts keep the tmp path: use python -m)
    (tmp / "ok").write_text(" ".join(reqs))
    try:
        tmp.rename(venv)
    except OSError:  # another session finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return venv


LOG_SCRIPT = r"""
import json, sys
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

out = sys.argv[1]
data = load_breast_cancer()
names = [n.replace(" ", "_") for n in data.feature_names]
X = pd.DataFrame(data.data, columns=names)
y = data.target
client = MlflowClient()

REQS = ["scikit-learn"]  # given, so mlflow does not infer them in a subprocess (slow)

def log(model, name, example, run_name, **kw):
    with mlflow.start_run(run_name=run_name):
        info = mlflow.sklearn.log_model(model, name="model", input_example=example,
                                        registered_model_name=name, pip_requirements=REQS, **kw)
    return info

m1 = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
log(m1, "churn-prediction", X.head(20), "v1")  # MLflow 3's default format: skops
client.set_registered_model_alias("churn-prediction", "champion", "1")
m2 = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500)).fit(X, y)
log(m2, "churn-prediction", None, "v2-no-example", serialization_format="cloudpickle")
client.set_registered_model_alias("churn-prediction", "noexample", "2")

class Custom(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input

with mlflow.start_run(run_name="custom"):
    mlflow.pyfunc.log_model(name="model", python_model=Custom(), pip_requirements=REQS,
                            registered_model_name="custom-model")
client.set_registered_model_alias("custom-model", "champion", "1")

rows = X.iloc[:60]
json.dump({"rows": rows.to_dict(orient="records"),
           "proba": m1.predict_proba(rows)[:, 1].tolist(),
           "run_id": client.get_model_version("churn-prediction", "1").run_id}, open(out, "w"))
"""


class MlflowServer:
    def __init__(self, venv: Path, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "mlflow-server.log", "wb")  # noqa: SIM115 (closed in stop)
        # no job runner / huey workers: only the tracking server, in its own process group
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [
                str(venv / "bin" / "python"),
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{work / 'mlflow.db'}",
                "--artifacts-destination",
                str(work / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"mlflow server did not start: {(work / 'mlflow-server.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the server's process group (its uvicorn worker), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # the worker may outlive the server process by a moment
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_registry(tmp_path_factory) -> Iterator[tuple[str, dict]]:
    """(tracking URL, what the log script wrote: rows, predict_proba, run id)."""
    venv = mlflow_venv()
    work = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(venv, work)
    try:
        (work / "log_models.py").write_text(LOG_SCRIPT)
        r = subprocess.run(
            [str(venv / "bin" / "python"), str(work / "log_models.py"), str(work / "logged.json")],
            env={**os.environ, "MLFLOW_TRACKING_URI": server.url},
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        yield server.url, json.loads((work / "logged.json").read_text())
    finally:
        server.stop()
