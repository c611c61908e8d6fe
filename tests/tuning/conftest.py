"""Fixtures for the tune step: the digits prepared as version ``digits`` in a state folder of
the session's own, a small ``tune:`` config (tiny epochs), a real PostgreSQL started by
``tools.postgres`` and a real MLflow server, for workers in separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.local_servers import free_port

REPO = Path(__file__).resolve().parents[2]

TUNE = {
    "n_trials": 6,
    "epochs": 3,
    "metric": "val_accuracy",
    "direction": "maximize",
    "seed": 7,
    "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "heartbeat_interval": 1,
    "grace_period": 4,
    "space": {
        "learning_rate": {"low": 1.0e-5, "high": 0.05, "log": True},
        "batch_size": {"choices": [64, 128]},
        "channels": {"low": 4, "high": 8, "step": 4},
    },
}


def write_params(path: Path, **tune: Any) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"] = {**TUNE, **tune}
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder holding the digits prepared as dataset version ``digits``."""
    root = tmp_path_factory.mktemp("tuning")
    home = root / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("FLYWHEEL_HOME", str(home))
    try:
        from ml_tasks.core.settings import load_settings
        from ml_tasks.data.synthetic import write_digits
        from ml_tasks.prepare import prepare

        write_digits(root / "images")
        prepare(load_settings(), data_dir=root / "images", dataset_version="digits")
    finally:
        mp.undo()
    return home


@pytest.fixture
def tune_env(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's environment: the prepared lake, its own MLflow store and Optuna storage."""
    env = {
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_LAKE_URI": (prepared / "lake").as_uri(),
        "FLYWHEEL_PARAMS": str(write_params(tmp_path / "params.yaml")),
    }
    for name in ("MLFLOW_TRACKING_URI", "FLYWHEEL_OPTUNA_STORAGE", "AIRFLOW_CONN_FLYWHEEL_OPTUNA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL on 127.0.0.1 (Debian's package, installed when missing)."""
    from tools.postgres import running

    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    try:
        with running(root / "data", free_port()) as url:
            yield url
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def tune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ml_tasks.tune", *args]


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tune_command("worker", "--no-progress", *args),
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def child_runs(tracking_uri: str, parent: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_run(parent).info.experiment_id
    return list(
        client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    )
