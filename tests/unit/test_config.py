import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml_tasks.config import ConfigError, load_params, load_settings


def test_defaults_live_under_the_state_folder(flywheel_home: Path) -> None:
    settings = load_settings()
    assert settings.home == flywheel_home.resolve()
    assert settings.lake_uri == (flywheel_home / "lake").resolve().as_uri()
    assert settings.tracking_uri == f"sqlite:///{flywheel_home.resolve() / 'mlflow.db'}"
    assert settings.tracking_is_local
    assert settings.backend == "local"


def test_environment_overrides(flywheel_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_LAKE_URI", "s3://lake/prefix")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    settings = load_settings()
    assert settings.lake_uri == "s3://lake/prefix"
    assert not settings.tracking_is_local


def test_unknown_backend_is_refused(flywheel_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_BACKEND", "mainframe")
    with pytest.raises(ConfigError, match="mainframe"):
        load_settings()


def test_params_are_grouped_by_stage() -> None:
    params = load_params()
    assert {"prepare", "checks", "train", "validate"} <= set(params)
    assert len(params["prepare"]["classes"]) == 10


def test_config_command_prints_json(flywheel_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ml_tasks.config"], capture_output=True, text=True, check=True
    ).stdout
    printed = json.loads(out)
    assert printed["home"] == str(flywheel_home.resolve())
    assert {"lake_uri", "tracking_uri", "model_name", "backend"} <= set(printed)


def test_importing_ml_tasks_does_no_work(flywheel_home: Path) -> None:
    code = (
        "import ml_tasks.config, ml_tasks.events, ml_tasks.lake, ml_tasks.step, sys; "
        "print(sorted(m for m in ('torch', 'mlflow', 'great_expectations') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not flywheel_home.exists()
