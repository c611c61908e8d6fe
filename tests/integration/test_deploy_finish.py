"""An approved version whose deploy failed is deployed by the next run (``deploy finish``, which
``make demo`` runs first), for its approver and stamped with the approving run, audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Workspace
from tests.servers import mlflow_server
from tools.local_servers import free_port

pytestmark = pytest.mark.slow

DAG_RUN = "manual__2026-12-01T10:00:00+00:00"
FAST_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def approve(ws: Workspace, model_version: str, who: str) -> None:
    """The event the approval gate writes when ``who`` answers Approve (ApprovalGate)."""
    event = {
        "ts": "2026-12-01T10:05:00.000+00:00",
        "level": "info",
        "component": "airflow",
        "action": "gate_decided",
        "gate": "approval",
        "decision": "approve",
        "who": who,
        "timed_out": False,
        "model_version": model_version,
        "dag_id": "training",
        "run_id": DAG_RUN,
        "task_id": "await_approval",
    }
    with (ws.home / "logs" / "events.jsonl").open("a") as log:
        log.write(json.dumps(event) + "\n")


def test_a_failed_deploy_is_finished_by_the_next_run(workspace: Workspace, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    port = free_port()
    in_dag = {"AIRFLOW_CTX_DAG_ID": "training", "AIRFLOW_CTX_DAG_RUN_ID": DAG_RUN}
    with mlflow_server(tmp_path / "mlflow", port=port) as url:
        env = {"MLFLOW_TRACKING_URI": url, **in_dag}
        trained = workspace.run(
            "ml_tasks.train", "--no-progress", "--result-path", str(tmp_path / "t.json"), **env
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        run_id = json.loads((tmp_path / "t.json").read_text())["mlflow_run_id"]
        validated = workspace.run(
            "ml_tasks.validate",
            "--run-id",
            run_id,
            "--dataset-version",
            workspace.dataset_version,
            "--force-register",
            **{**env, "AIRFLOW_CTX_TASK_ID": "validate"},
        )
        assert validated.returncode == 0, validated.stderr[-3000:]
        approve(workspace, "1", "alice")
    # The deploy task runs while the server is down: it fails, and so do Airflow's retries.
    failed = workspace.run(
        "ml_tasks.deploy",
        "promote",
        "--model-version",
        "1",
        "--approved-by",
        "alice",
        "--caller-run-id",
        DAG_RUN,
        MLFLOW_TRACKING_URI=url,
        **FAST_RETRIES,
    )
    assert failed.returncode != 0, failed.stderr[-3000:]  # 75 since the step contract has it

    with mlflow_server(tmp_path / "mlflow", port=port):
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        assert client.get_model_version_by_alias("digits", "challenger").version == "1"
        done = workspace.run("ml_tasks.deploy", "finish", "--who", "demo", MLFLOW_TRACKING_URI=url)
        assert done.returncode == 0, done.stderr[-3000:]
        finished: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])[
            "finished"
        ]
        assert [(f["model_version"], f["approved_by"]) for f in finished] == [("1", "alice")]
        champion = client.get_model_version_by_alias("digits", "champion")
        assert champion.version == "1" and "challenger" not in champion.aliases
        assert champion.tags["flywheel.approved_by"] == "alice"
        assert champion.tags["flywheel.deployed_by_run"] == DAG_RUN
        again = workspace.run("ml_tasks.deploy", "finish", MLFLOW_TRACKING_URI=url)
        assert json.loads(again.stdout.strip().splitlines()[-1])["finished"] == []

    audit = workspace.run("ml_tasks.audit", "--run-id", DAG_RUN, "--json")
    assert audit.returncode == 0, audit.stderr[-3000:]
    actions = [e["action"] for e in json.loads(audit.stdout)]
    assert {"deploy_resumed", "alias_moved", "deployed"} <= set(actions)
    resumed = next(e for e in workspace.events() if e["action"] == "deploy_resumed")
    assert resumed["who"] == "demo" and resumed["approved_by"] == "alice"
