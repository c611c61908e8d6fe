"""The training DAG file, unchanged, with ``FLYWHEEL_BACKEND=kubeflow``: every step task is a
run on the stand-in KFP server (tests/kubeflow/kfp_server.py), which executes each submitted
one-step pipeline with kfp.local, against a real MLflow server; the gates stay in Airflow."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.dags.conftest import APPROVER, champion, mlflow_get, run_dag, task_states
from tests.kubeflow.kfp_server import serve_in_process

pytestmark = pytest.mark.slow


def test_training_dag_on_kubeflow_registers_and_deploys_a_challenger(
    training_dag: Any,
    data_repo: str,
    mlflow_url: str,
    airflow_api: Any,
    state_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = state_root / "kfp-server.log"
    with serve_in_process(os.environ["FLYWHEEL_STEPS_PYTHON"], "execute", log) as url:
        monkeypatch.setenv("FLYWHEEL_BACKEND", "kubeflow")
        monkeypatch.setenv("FLYWHEEL_KFP_HOST", url)
        monkeypatch.setenv("FLYWHEEL_KFP_POLL_SECONDS", "0.5")
        dag_run, responder = run_dag(
            training_dag, airflow_api, [(APPROVER, "Approve")], force_register=True, epochs=4
        )
        with urllib.request.urlopen(f"{url}/stand-in/state") as response:
            runs = json.loads(response.read())["runs"]
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", (states, log.read_text()[-3000:])
    assert responder is not None and responder.error is None, responder.error
    # every step task was one KFP run; the gates ran in Airflow
    steps = ("resolve_dataset", "prepare", "checks", "train", "validate", "deploy")
    assert sorted(r["display_name"].split(" ")[0] for r in runs.values()) == sorted(
        f"training.{s}" for s in steps
    )
    assert {r["state"] for r in runs.values()} == {"SUCCEEDED"}
    validated = dag_run.get_task_instance("validate").xcom_pull(task_ids="validate")
    version = validated["model_version"]
    assert validated["registered"] and champion(mlflow_url) == version
    tags = {
        t["key"]: t["value"]
        for t in mlflow_get(mlflow_url, "model-versions/get", name="digits", version=version)[
            "model_version"
        ]["tags"]
    }
    assert tags["flywheel.caller_run_id"] == dag_run.run_id
    kfp_run = {r["display_name"].split(" ")[0]: r["run_id"] for r in runs.values()}
    assert tags["flywheel.kfp_run_id"] == kfp_run["training.validate"]
    run = mlflow_get(mlflow_url, "runs/get", run_id=validated["mlflow_run_id"])["run"]
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run_tags["flywheel.kfp_run_id"] == kfp_run["training.train"]
    assert run_tags["flywheel.caller_run_id"] == dag_run.run_id
    assert tags["flywheel.approved_by"] == APPROVER
