"""The tuning DAG with ``dag.test()`` on the embedded default (SQLite for Optuna and MLflow,
local steps), then a training run that starts from its best params."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dags.conftest import APPROVER, REPO, run_dag, task_states

TINY_TUNE = {
    "n_trials": 4,
    "epochs": 2,
    "metric": "val_accuracy",
    "direction": "maximize",
    "seed": 3,
    "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "heartbeat_interval": 2,
    "grace_period": 6,
    "space": {
        "learning_rate": {"low": 0.001, "high": 0.02, "log": True},
        "channels": {"low": 4, "high": 8, "step": 4},
    },
}


@pytest.fixture(scope="module")
def tuning_dag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "tuning.py"))
    assert not bag.import_errors
    return bag.dags["tuning"]


def test_tuning_dag_shape(tuning_dag: Any) -> None:
    assert set(tuning_dag.task_dict) == {
        "resolve_dataset",
        "prepare",
        "create_study",
        "plan_workers",
        "tune",
        "finish",
        "summary",
    }
    assert tuning_dag.task_dict["create_study"].downstream_task_ids == {"plan_workers"}
    assert tuning_dag.task_dict["finish"].trigger_rule == "all_done"
    assert set(tuning_dag.params.keys()) == {"trials", "workers", "timeout", "dataset_version"}


@pytest.mark.slow
def test_two_workers_tune_and_training_uses_the_best_params(
    tuning_dag: Any,
    training_dag: Any,
    data_repo: str,
    airflow_api: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"] = TINY_TUNE
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded default

    dag_run = tuning_dag.test(run_conf={"trials": 4, "workers": 2})
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    home = Path(os.environ["FLYWHEEL_HOME"])
    best = json.loads((home / "lake" / "tuning" / data_repo / "latest.json").read_text())
    assert best["study"].startswith("tuning-") and best["dataset_version"] == data_repo
    with sqlite3.connect(home / "optuna.db") as db:
        (count,) = db.execute(
            "select count(*) from trials join studies using (study_id) where study_name = ?",
            (best["study"],),
        ).fetchone()
    assert count == 4

    dag_run, responder = run_dag(
        training_dag,
        airflow_api,
        [(APPROVER, "Reject")],
        force_register=True,
        use_best_params=True,
        epochs=2,
    )
    assert responder is not None and responder.error is None, responder
    assert str(dag_run.state) == "success", task_states(dag_run)
    with sqlite3.connect(home / "mlflow.db") as db:
        (version,) = db.execute(
            "select max(cast(version as integer)) from model_versions where name = 'digits'"
        ).fetchone()
        tags = dict(
            db.execute(
                "select key, value from model_version_tags where name = 'digits' and version = ?",
                (str(version),),
            ).fetchall()
        )
    assert tags["flywheel.tuning.study"] == best["study"]
    assert tags["flywheel.tuning.trial"] == str(best["trial"])
    params_used = json.loads(tags["flywheel.params"])
    assert float(params_used["learning_rate"]) == pytest.approx(best["params"]["learning_rate"])
