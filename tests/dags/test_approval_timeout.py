"""An approval nobody answers counts as Reject, and a real scheduler enforces it.

``dag.test()`` never times an approval out (only the scheduler's sweep of tasks parked in
``awaiting_input`` does), so this runs a manual DAG run under ``airflow scheduler`` with the
approval timeout set to a few seconds (``FLYWHEEL_APPROVAL_TIMEOUT``, read when the DAG is
parsed: the DAG is re-serialized with it, and with the default again afterwards) and the
sweep every 2 s. Nobody answers: the run must take the reject path, record who decided
("timeout") and why, tag the version, and leave ``champion`` alone.

Own data repository, state folder and MLflow server (``tmp_path``); the session's Airflow DB
and api-server.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from flywheel_airflow.rest_api import AirflowApi

from tests.dags import scheduler
from tests.dags.conftest import champion, make_data_repo, mlflow_get
from tests.servers import mlflow_server
from tools.local_airflow import airflow_cli

pytestmark = pytest.mark.slow

APPROVAL_TIMEOUT_S = "8"
TIMEOUT = 400


def run_state(run_id: str) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        state = session.scalar(
            select(DagRun.state).where(DagRun.dag_id == scheduler.DAG_ID, DagRun.run_id == run_id)
        )
    return str(getattr(state, "value", state))


def test_an_unanswered_approval_times_out_to_reject(
    airflow_db: Path, airflow_api: AirflowApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, repo = tmp_path / "home", tmp_path / "repo"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.setenv("FLYWHEEL_REPO", str(repo))
    make_data_repo(repo)
    scheduler_log = tmp_path / "scheduler.log"
    run_id = "manual__approval-timeout-test"
    with mlflow_server(tmp_path / "mlflow") as mlflow_url:
        env = scheduler.scheduler_env(
            dict(os.environ),
            airflow_api,
            MLFLOW_TRACKING_URI=mlflow_url,
            FLYWHEEL_APPROVAL_TIMEOUT=APPROVAL_TIMEOUT_S,
            AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL="2",
        )
        default_env = {k: v for k, v in env.items() if k != "FLYWHEEL_APPROVAL_TIMEOUT"}
        state, started = "queued", time.monotonic()
        try:
            airflow_cli(env, "dags", "reserialize")  # the DAG as parsed with the short timeout
            with scheduler.running_scheduler(env, scheduler_log) as process:
                airflow_cli(
                    env,
                    "dags",
                    "trigger",
                    scheduler.DAG_ID,
                    "--run-id",
                    run_id,
                    "--conf",
                    '{"epochs": 4}',
                )
                while time.monotonic() - started < TIMEOUT and process.poll() is None:
                    state = run_state(run_id)
                    stuck = set(scheduler.task_states(run_id).values()) & {
                        "failed",
                        "upstream_failed",
                    }
                    if state in ("success", "failed") or stuck:
                        break
                    time.sleep(2)
        finally:
            airflow_cli(default_env, "dags", "reserialize")  # other tests see the 24 h default
        tasks = scheduler.task_states(run_id)
        try:
            check(state, tasks, run_id, home / "logs" / "events.jsonl", mlflow_url)
        except BaseException:
            runs = [{"run_id": run_id, "state": state, "tasks": tasks}]
            print(scheduler.diagnostics(airflow_db, scheduler_log, runs))
            raise
        print(f"timed out to reject in {time.monotonic() - started:.0f} s")


def check(state: str, tasks: dict[str, str], run_id: str, log: Path, mlflow_url: str) -> None:
    assert not set(tasks.values()) & scheduler.BROKEN, tasks
    assert state == "success", (state, tasks)
    assert tasks["await_approval"] == "success"  # resolved by the sweep, with the default
    assert (tasks["record_rejection"], tasks["deploy"]) == ("success", "skipped"), tasks
    events = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [e for e in events if e.get("run_id") == run_id]
    gate = [e for e in mine if e["action"] == "gate_decided" and e.get("gate") == "approval"]
    assert len(gate) == 1, gate
    decided = (gate[0]["decision"], gate[0]["who"], gate[0]["timed_out"])
    assert decided == ("reject", "timeout", True), gate
    version = gate[0]["model_version"]
    rejected = [e for e in mine if e["action"] == "rejection_recorded"]
    assert rejected and (rejected[0]["who"], rejected[0]["model_version"]) == ("timeout", version)
    tags: dict[str, Any] = {
        t["key"]: t["value"]
        for t in mlflow_get(mlflow_url, "model-versions/get", name="digits", version=version)[
            "model_version"
        ]["tags"]
    }
    assert (tags["flywheel.approval"], tags["flywheel.rejected_by"]) == ("rejected", "timeout")
    assert "timed out" in tags.get("flywheel.rejection_reason", ""), tags
    assert champion(mlflow_url) is None  # nothing was deployed
