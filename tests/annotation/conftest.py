"""Real servers for the annotation loop, started once per session on 127.0.0.1.

Label Studio (its own virtualenv; ~45 s on first start), a moto S3 endpoint, an MLflow server
with a tiny registered ``champion``, and an isolated Airflow home (SQLite, migrated) so the
DAGs run with ``dag.test()``. Each test gets its own bucket, Label Studio project (dataset
name) and throwaway git + DVC repository: never /work/main's git.

Run in the orchestrator environment:
``.venvs/orchestrator/bin/python -m pytest tests/annotation``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotation_support import AWS, MODEL_NAME, Loop, run_helper
from servers import steps_python

from tools.airflow_home import airflow_home_settings


@pytest.fixture(scope="session")
def label_studio_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Label Studio launched, not yet up: its ~45 s first start overlaps the other set-up."""
    from tools import label_studio_server as lss

    if not lss.label_studio_bin().exists():
        pytest.fail(
            "Label Studio is not installed: make label-studio-env "
            "(or python -m tools.label_studio_server install)"
        )
    server = lss.start(tmp_path_factory.mktemp("label-studio"), wait=False)
    try:
        yield server
    finally:
        lss.stop_pid(server.pid)


@pytest.fixture(scope="session")
def label_studio(
    label_studio_started: Any, s3_endpoint: str, champion: str, airflow_home: Path
) -> Any:
    from tools import label_studio_server as lss

    lss.wait_until_up(label_studio_started.url, timeout=240)
    return label_studio_started


@pytest.fixture(scope="session")
def champion(mlflow_url: str) -> str:
    """A tiny CNN trained on synthetic digits, registered with alias ``champion``."""
    out = run_helper(
        "champion", "--model-name", MODEL_NAME, env={"MLFLOW_TRACKING_URI": mlflow_url}
    )
    return str(out["version"])


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An isolated, migrated Airflow home; set before anything imports Airflow."""
    if "airflow" in sys.modules and "AIRFLOW_HOME" not in os.environ:
        pytest.fail(
            "Airflow was imported before the isolated home was set: run tests/annotation "
            "in a pytest process of its own (make test-orchestrator does)"
        )
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **airflow_home_settings(home),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    os.environ.update(env)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )
    return home


@pytest.fixture
def loop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label_studio: Any,
    s3_endpoint: str,
    mlflow_url: str,
    champion: str,
    airflow_home: Path,
) -> Loop:
    """A fresh bucket, dataset name and repository, with the env a worker would have."""
    name = uuid.uuid4().hex[:8]
    bucket, dataset = f"lake-{name}", f"test-{name}"
    home = tmp_path / "home"
    repo = tmp_path / "repo"
    env = {
        **AWS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_REPO": str(repo),
        "FLYWHEEL_LAKE_URI": f"s3://{bucket}",
        "FLYWHEEL_DVC_REMOTE": "minio",
        "FLYWHEEL_MODEL_NAME": MODEL_NAME,
        "FLYWHEEL_DATASET": dataset,
        "FLYWHEEL_BACKEND": "local",
        "FLYWHEEL_STEPS_PYTHON": steps_python(),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "AIRFLOW_CONN_FLYWHEEL_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": AWS["AWS_ACCESS_KEY_ID"],
                "password": AWS["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_CONN_FLYWHEEL_LABEL_STUDIO": json.dumps(
            {"conn_type": "http", "host": label_studio.url, "password": label_studio.token}
        ),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    world = Loop(bucket, dataset, repo, home, s3_endpoint, label_studio, champion)
    world.s3().create_bucket(Bucket=bucket)
    run_helper("repo", "--path", str(repo), "--bucket", bucket)
    return world


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack for real (``python -m tools.stack up``), shared by the stack and
    browser tests: starting it costs minutes."""
    from stack_support import started_stack

    with started_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started
