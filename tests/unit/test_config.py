import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_tasks.core.settings import ConfigError, load_params, load_settings


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


def test_params_come_from_the_file_the_environment_names(
    flywheel_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  epochs: 7\n  lr: 0.5\n")
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(mine))
    assert load_settings().params_path == mine
    assert load_params() == {"train": {"epochs": 7, "lr": 0.5}}


def test_params_default_to_the_repository_the_environment_names(
    flywheel_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_PARAMS", raising=False)
    monkeypatch.setenv("FLYWHEEL_REPO", str(tmp_path))
    (tmp_path / "params.yaml").write_text("validate:\n  margin: 0.25\n")
    assert load_params() == {"validate": {"margin": 0.25}}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "no params file at"),
        ("- a list\n- not stages\n", "must hold a mapping of stage names"),
        ("", "must hold a mapping of stage names"),
    ],
    ids=["missing", "a list", "empty"],
)
def test_unusable_params_are_refused_by_name(tmp_path: Path, text: str | None, error: str) -> None:
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=error) as refused:
        load_params(path)
    assert str(path) in str(refused.value)


def test_yaml_is_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(yaml.YAMLError, match="python/object/apply"):
        load_params(path)


def test_config_command_refuses_bad_settings_with_a_usage_error(
    flywheel_home: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "FLYWHEEL_PARAMS": str(tmp_path / "absent.yaml")}
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.config", "--params"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"error: no params file at {tmp_path / 'absent.yaml'}"
    env = {**os.environ, "FLYWHEEL_BACKEND": "mainframe"}
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.config"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and "FLYWHEEL_BACKEND='mainframe'" in done.stderr


def test_config_command_prints_json(flywheel_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ml_tasks.config"], capture_output=True, text=True, check=True
    ).stdout
    printed = json.loads(out)
    assert printed["home"] == str(flywheel_home.resolve())
    assert {"lake_uri", "tracking_uri", "model_name", "backend"} <= set(printed)


def test_importing_ml_tasks_does_no_work(flywheel_home: Path) -> None:
    code = (
        "import ml_tasks.core.settings, ml_tasks.core.events, ml_tasks.core.lake, "
        "ml_tasks.core.step, sys; "
        "print(sorted(m for m in ('torch', 'mlflow', 'great_expectations') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not flywheel_home.exists()
