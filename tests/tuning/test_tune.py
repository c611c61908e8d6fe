"""The tune step in one process on the embedded default (SQLite storage, SQLite MLflow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml_tasks.tune import main
from tests.tuning.conftest import child_runs, write_params


def run_tune(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main([*args, "--no-progress"] if args[0] in ("run", "worker") else list(args))
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else {}), err


def test_a_seeded_study_prunes_logs_every_trial_and_writes_the_best_params(
    tune_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ml_tasks.core.settings import load_settings

    code, result, err = run_tune(capsys, "run", "--dataset-version", "digits", "--study", "s1")
    assert code == 0, err
    assert sum(result["counts"].values()) == 6
    assert result["counts"].get("PRUNED", 0) >= 1, result["counts"]
    settings = load_settings()
    children = child_runs(settings.tracking_uri, result["mlflow_parent_run_id"])
    assert len(children) == 6
    by_trial = {int(r.data.tags["flywheel.tuning.trial"]): r for r in children}
    assert sorted(by_trial) == list(range(6))
    import optuna

    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{settings.home}/optuna.db")
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert run.data.tags["flywheel.tuning.state"] == trial.state.name
        assert run.info.status == status[trial.state.name]
        assert "learning_rate" in run.data.params
        assert len(run.data.metrics) >= 3  # per-epoch train_loss, val_loss, val_accuracy
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["flywheel.tuning.best_trial"] == str(study.best_trial.number)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert "best_learning_rate" in parent.data.params
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/optimization_history.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
    }
    lake = Path(tune_env["FLYWHEEL_LAKE_URI"].removeprefix("file://")) / "tuning" / "digits"
    saved = json.loads((lake / "latest.json").read_text())
    assert saved == json.loads((lake / "s1.json").read_text())
    assert saved["params"] == study.best_params and saved["trial"] == study.best_trial.number
    assert saved["study"] == "s1" and saved["dataset_version"] == "digits"


def test_a_trial_that_raises_is_failed_with_its_error_and_the_study_goes_on(
    tune_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml_tasks.model.training

    real_fit = ml_tasks.model.training.fit
    calls = {"n": 0}

    def flaky_fit(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ml_tasks.model.training, "fit", flaky_fit)
    write_params(Path(tune_env["FLYWHEEL_PARAMS"]), pruner={"name": "none"})
    code, result, err = run_tune(
        capsys, "run", "--dataset-version", "digits", "--study", "s2", "--n-trials", "3"
    )
    assert code == 0, err
    assert result["counts"] == {"COMPLETE": 2, "FAIL": 1}
    from ml_tasks.core.settings import load_settings

    failed = [
        r
        for r in child_runs(load_settings().tracking_uri, result["mlflow_parent_run_id"])
        if r.info.status == "FAILED"
    ]
    assert len(failed) == 1
    assert "out of memory (simulated)" in failed[0].data.tags["flywheel.tuning.error"]


@pytest.mark.parametrize(
    ("space", "named"),
    [
        ({"learning_rate": {"low": 0.1, "high": 0.01}}, "tune.space.learning_rate: inverted"),
        ({"channels": {"low": 8, "high": 8}}, "tune.space.channels: empty"),
        ({"dropout": {"low": 0.1, "high": 0.5}}, "unknown hyperparameter 'dropout'"),
        ({"learning_rate": {"low": 0, "high": 0.1, "log": True}}, "log-scale range needs low > 0"),
    ],
)
def test_a_bad_space_is_refused_before_any_trial(
    tune_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    space: dict[str, Any],
    named: str,
) -> None:
    write_params(Path(tune_env["FLYWHEEL_PARAMS"]), space=space)
    code, _, err = run_tune(capsys, "run", "--dataset-version", "digits", "--study", "bad")
    assert code == 3
    assert named in err
    assert not (Path(tune_env["FLYWHEEL_HOME"]) / "optuna.db").exists()


def test_a_storage_that_cannot_be_reached_is_named_before_any_trial(
    tune_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.local_servers import free_port

    url = f"postgresql+psycopg://flywheel:secret@127.0.0.1:{free_port()}/optuna"
    code, _, err = run_tune(
        capsys, "run", "--dataset-version", "digits", "--study", "s", "--storage", url
    )
    assert code == 75
    assert "the Optuna storage postgresql+psycopg://flywheel:***@127.0.0.1" in err
    assert "secret" not in err
    assert "no trial was run" in err
    assert not (Path(tune_env["FLYWHEEL_HOME"]) / "mlflow.db").exists()
