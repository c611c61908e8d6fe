"""The whole training DAG with ``dag.test()``: real steps (local backend, steps interpreter),
a real MLflow server, a real api-server answering the approval the way the UI does.

Each run trains 4 epochs on scikit-learn's digits; ``force_register`` makes the approve and
reject paths independent of the order the tests run in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.dags.conftest import (
    APPROVER,
    INTRUDER,
    champion,
    mlflow_get,
    run_dag,
    task_states,
)

pytestmark = pytest.mark.slow

FAST = {"epochs": 4}


def events_of(run_id: str) -> list[dict[str, Any]]:
    from ml_tasks.core.events import read_events
    from ml_tasks.core.settings import load_settings

    return [
        e
        for e in read_events(load_settings().log_path)
        if run_id in (e.get("run_id"), e.get("caller_run_id"))
    ]


def test_approve_path_deploys_the_challenger(
    training_dag: Any, data_repo: str, mlflow_url: str, airflow_api: Any
) -> None:
    dag_run, responder = run_dag(
        training_dag,
        airflow_api,
        [(INTRUDER, "Approve"), (APPROVER, "Approve")],
        force_register=True,
        **FAST,
    )
    assert responder is not None and responder.error is None, responder.error
    # The unassigned user is refused; the assigned approver's answer is the one that counts.
    assert responder.outcomes == [(INTRUDER, "Approve", "403"), (APPROVER, "Approve", "ok")]
    assert responder.detail is not None
    assert "challenger" in responder.detail["body"] and "accuracy" in responder.detail["body"]
    assert [u["id"] for u in responder.detail["assigned_users"]] == [APPROVER]

    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states["deploy"] == "success"
    assert states["record_rejection"] == "skipped"
    assert states["registration_skipped"] == "skipped"

    validated = dag_run.get_task_instance("validate").xcom_pull(task_ids="validate")
    version = validated["model_version"]
    assert champion(mlflow_url) == version
    tags = {
        t["key"]: t["value"]
        for t in mlflow_get(mlflow_url, "model-versions/get", name="digits", version=version)[
            "model_version"
        ]["tags"]
    }
    assert tags["flywheel.approved_by"] == APPROVER
    assert "flywheel.previous_champion" in tags
    lake = Path(os.environ["FLYWHEEL_HOME"]) / "lake" / "deployments" / version
    assert (lake / "inferenceservice.yaml").read_text().count(f"models:/digits/{version}") == 1

    actions = {(e["action"], e.get("gate")) for e in events_of(dag_run.run_id)}
    assert ("gate_decided", "register_if_better") in actions
    assert ("gate_decided", "approval") in actions
    assert ("alias_moved", None) in actions


def test_reject_path_records_the_decision_and_deploys_nothing(
    training_dag: Any, data_repo: str, mlflow_url: str, airflow_api: Any
) -> None:
    before = champion(mlflow_url)
    dag_run, responder = run_dag(
        training_dag, airflow_api, [(APPROVER, "Reject")], force_register=True, **FAST
    )
    assert responder is not None and responder.error is None, responder.error
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states["record_rejection"] == "success"
    assert states["deploy"] == "skipped"
    version = dag_run.get_task_instance("validate").xcom_pull(task_ids="validate")["model_version"]
    assert champion(mlflow_url) == before != version
    tags = {
        t["key"]: t["value"]
        for t in mlflow_get(mlflow_url, "model-versions/get", name="digits", version=version)[
            "model_version"
        ]["tags"]
    }
    assert tags["flywheel.approval"] == "rejected"
    assert tags["flywheel.rejected_by"] == APPROVER
    rejected = [e for e in events_of(dag_run.run_id) if e["action"] == "rejection_recorded"]
    assert rejected and rejected[0]["who"] == APPROVER and rejected[0]["model_version"] == version


def test_approval_marked_success_by_hand_deploys_nothing(
    training_dag: Any, data_repo: str, mlflow_url: str
) -> None:
    # "Mark success" on the approval task in the UI: no decision exists, so no approval.
    before = champion(mlflow_url)
    dag_run = training_dag.test(
        run_conf={"force_register": True, **FAST}, mark_success_pattern="await_approval"
    )
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states["deploy"] == "skipped" and states["record_rejection"] == "skipped", states
    version = dag_run.get_task_instance("validate").xcom_pull(task_ids="validate")["model_version"]
    assert champion(mlflow_url) == before != version
    missing = [
        e
        for e in events_of(dag_run.run_id)
        if e["action"] == "gate_decided" and e.get("decision") == "none"
    ]
    assert len(missing) == 1 and "stays challenger" in missing[0]["reason"], missing


def test_not_better_skips_registration_with_the_reason(
    training_dag: Any,
    data_repo: str,
    mlflow_url: str,
    airflow_api: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A floor no 4-epoch model reaches: validate says skip, whatever the registry holds.
    params = json.loads(json.dumps(_params()))
    params["validate"]["min_accuracy"] = 0.9999
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(path))
    dag_run, _ = run_dag(training_dag, **FAST)
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states["registration_skipped"] == "success"
    assert states["await_approval"] == "skipped"
    assert states["deploy"] == "skipped" and states["record_rejection"] == "skipped"
    gate = [e for e in events_of(dag_run.run_id) if e.get("gate") == "register_if_better"]
    assert gate and "below the floor" in gate[0]["reason"]
    note = airflow_api.dag_run("training", dag_run.run_id, "admin")["note"]
    assert note and "below the floor" in note


def test_bad_data_fails_the_run_at_checks(
    training_dag: Any,
    data_repo: str,
    mlflow_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    params = _params()
    params["checks"]["min_rows"] = 100_000  # more images than the dataset has
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(path))
    dag_run, _ = run_dag(training_dag, **FAST)
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed"
    assert states["checks"] == "failed"
    assert states["train"] in ("upstream_failed", "None", "none")
    out = capfd.readouterr()
    assert "expect_table_row_count_to_be_between" in out.out + out.err


def _params() -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(
        (Path(os.environ["FLYWHEEL_REPO"]) / "params.yaml").read_text()
    )
    return loaded
