"""`cloud-hub models import` against a real MLflow server (REST only; mlflow lives in its own
virtualenv, see mlflow_support): the hub's answers equal the logged model's predict_proba;
provenance; clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cloud_hub.hub_support import live_server
from tests.cloud_hub.mlflow_support import mlflow_registry  # noqa: F401  (fixture)

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _hub(tmp_path, keypair):
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    return Hub(HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", "models", "import", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_import_alias_answers_like_the_logged_model(tmp_path, keypair, mlflow_registry):  # noqa: F811
    from fastapi.testclient import TestClient

    from cloud_hub.app import create_app

    url, logged = mlflow_registry
    hub = _hub(tmp_path, keypair)
    try:
        app = create_app(hub)
        with live_server(app) as hub_url:
            r = _cli(
                "models:/churn-prediction@champion",
                "--tracking-uri",
                url,
                "--url",
                hub_url,
                "--key",
                str(keypair[0]),
            )
            assert r.returncode == 0, r.stderr
            assert "imported churn-prediction version 1" in r.stdout
        with TestClient(app) as client:
            got = client.post(
                "/v1/models/churn-prediction@champion/predict", json={"rows": logged["rows"]}
            )
            assert got.status_code == 200, got.text
            probs = [p["probability"] for p in got.json()["predictions"]]
            assert probs == pytest.approx(logged["proba"], abs=1e-5)
            mv = client.get("/v1/models/churn-prediction@champion").json()
            assert mv["version"] == "1"
            prov = mv["manifest"]["provenance"]["mlflow"]
            assert prov == {
                "tracking_uri": url,
                "model_uri": "models:/churn-prediction@champion",
                "name": "churn-prediction",
                "version": "1",
                "run_id": logged["run_id"],
                "source_alias": "champion",
                "stage": None,
                "flavor": "sklearn",
                "source": prov["source"],
            }
    finally:
        hub.close()


def test_import_errors_are_clear(tmp_path, keypair, mlflow_registry):  # noqa: F811
    from cloud_hub.mlflow_import import run_import
    from edge_runtime.errors import NotFoundError, UnavailableError, ValidationError
    from tests.conftest import free_port

    url, logged = mlflow_registry

    def push(bundle: Path, aliases: list[str]) -> dict:
        raise AssertionError("nothing may be pushed")

    cases = [
        ("models:/nosuch@champion", url, NotFoundError, "model_uri", "'nosuch'"),
        ("models:/churn-prediction@nosuch", url, NotFoundError, "model_uri", "alias 'nosuch'"),
        ("models:/churn-prediction/99", url, NotFoundError, "model_uri", "version 99"),
        ("models:/churn-prediction@noexample", url, ValidationError, "sample", "input example"),
        ("models:/custom-model@champion", url, ValidationError, "flavor", "python_function"),
        ("runs:/abc/model", url, ValidationError, "model_uri", "models:/NAME@ALIAS"),
        (
            "models:/churn-prediction@champion",
            f"http://127.0.0.1:{free_port()}",
            UnavailableError,
            "tracking_uri",
            "cannot reach the MLflow server",
        ),
    ]
    for uri, tracking, exc_type, field, words in cases:
        with pytest.raises(exc_type) as e:
            run_import(uri, tracking, push, key=keypair[0])
        assert e.value.field == field and words in e.value.message, (uri, e.value.message)
    # the version without an input example imports with --sample
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sample = tmp_path / "sample.csv"
    pacsv.write_csv(pa.Table.from_pylist(logged["rows"]), sample)
    pushed: list = []
    got = run_import(
        "models:/churn-prediction@noexample",
        url,
        lambda b, a: pushed.append((b.name, a)) or {"name": "churn-prediction", "version": "2"},
        key=keypair[0],
        sample=str(sample),
    )
    assert got["mlflow"]["version"] == "2" and pushed == [("bundle", ["noexample"])]
    # --watch: a version already imported is skipped at the next poll
    from cloud_hub.mlflow_import import watch

    calls: list = []

    def step(seen: set[str]):
        calls.append(
            run_import(
                "models:/churn-prediction@noexample",
                url,
                lambda b, a: {"name": "churn-prediction", "version": "2"},
                key=keypair[0],
                sample=str(sample),
                skip_versions=seen,
            )
        )
        return calls[-1]

    watch("models:/churn-prediction@noexample", 0.01, step, lambda: len(calls) >= 2)
    assert calls[0]["mlflow"]["version"] == "2" and calls[1] is None
    # the CLI prints one line for an error
    r = _cli("models:/churn-prediction@nosuch", "--tracking-uri", url, "--key", str(keypair[0]))
    assert r.returncode == 1 and "alias 'nosuch'" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
