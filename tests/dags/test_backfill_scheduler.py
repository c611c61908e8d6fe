"""A real ``airflow backfill create`` run by a real scheduler (LocalExecutor, no ``dag.test``):
each backfill run trains on the dataset version that was current at its logical date, is
evaluated like any run, and registers nothing: ``champion`` (and every other alias) never moves.

The data repository holds two dataset versions, created 2026-03-01 08:00 and 2026-03-03 08:00
UTC. The DAG's cron ticks at 02:00 UTC, so a window from 2026-03-02 12:00 to 2026-03-04 12:00
holds two runs: 2026-03-03 02:00 (before the second version: the first) and 2026-03-04 02:00
(the second). ``force_register`` makes both verdicts "register", so "evaluated only" is shown
for models a normal run would have registered, not just on the "not better" path.

A backfill has its own ``max_active_runs`` (default 10): the DAG's ``max_active_runs=1`` bounds
only the other runs. The test passes ``--max-active-runs 1`` (as the README says to) so the runs
go in date order and never run DVC in the same repository at once.

Everything this test writes lives in its ``tmp_path``: the data repository and its DVC remote,
the Flywheel state folder (lake, event log) and an MLflow server of its own (a clean registry, so
"no champion" means this test moved none, whatever ran before). It shares the session's Airflow
DB and api-server (the execution API the scheduler's tasks talk to), and leaves the DAG's pause
state as it found it (paused: new DAGs start paused).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flywheel_airflow.rest_api import AirflowApi

from tests.dags.conftest import champion, make_data_repo, mlflow_get
from tests.dags.scheduler import (
    BROKEN,
    DAG_ID,
    diagnostics,
    running_scheduler,
    scheduler_env,
    task_states,
)
from tests.datasets import add_synthetic_version
from tests.servers import mlflow_server
from tools.local_airflow import airflow_cli

pytestmark = pytest.mark.slow

FIRST_CREATED = "2026-03-01T08:00:00+00:00"
SECOND_CREATED = "2026-03-03T08:00:00+00:00"
# --to-date is inclusive, but a bare date means midnight: "2026-03-04" would leave out the
# 2026-03-04 02:00 tick, hence explicit times.
FROM_DATE, TO_DATE = "2026-03-02T12:00:00+00:00", "2026-03-04T12:00:00+00:00"
BETWEEN, AFTER = "2026-03-03T02:00:00+00:00", "2026-03-04T02:00:00+00:00"
CONF = {"epochs": 4, "force_register": True}
TIMEOUT = 600


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def two_version_repo(repo: Path, env: dict[str, str]) -> tuple[str, str]:
    """The digits (created 2026-03-01) then 20 more images (2026-03-03), each committed."""
    first = make_data_repo(repo)
    index = repo / "data" / "versions.jsonl"
    entry = json.loads(index.read_text().splitlines()[0])
    assert entry["version"] == first
    index.write_text(json.dumps({**entry, "created_at": FIRST_CREATED}) + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dataset: the digits")
    second = add_synthetic_version(
        env,
        count=20,
        seed=9,
        when=datetime.fromisoformat(SECOND_CREATED),
        python=env["FLYWHEEL_STEPS_PYTHON"],
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dataset: twenty more")
    assert second != first
    return first, second


def latest_backfill_id() -> int:
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(
            session.scalar(select(func.max(Backfill.id)).where(Backfill.dag_id == DAG_ID)) or 0
        )


def backfill_completed(backfill_id: int) -> bool:
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        done = session.scalar(select(Backfill.completed_at).where(Backfill.id == backfill_id))
    return done is not None


def backfill_runs(backfill_id: int) -> list[dict[str, Any]]:
    """The backfill's DAG runs, oldest logical date first, each with its task states."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    def text(state: Any) -> str:
        return str(getattr(state, "value", state))

    with create_session() as session:
        runs = session.execute(
            select(
                DagRun.run_id,
                DagRun.logical_date,
                DagRun.state,
                DagRun.run_type,
                DagRun.conf,
                DagRun.start_date,
                DagRun.end_date,
            )
            .where(DagRun.dag_id == DAG_ID, DagRun.backfill_id == backfill_id)
            .order_by(DagRun.logical_date)
        ).all()
        found = []
        for run_id, logical_date, state, run_type, conf, start, end in runs:
            found.append(
                {
                    "run_id": run_id,
                    "logical_date": logical_date.isoformat(),
                    "state": text(state),
                    "run_type": text(run_type),
                    "conf": conf,
                    "start": start.isoformat() if start else None,
                    "end": end.isoformat() if end else None,
                    "tasks": task_states(run_id),
                }
            )
    return found


def events_by_run(log_path: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        event = json.loads(line)
        if event.get("run_id"):
            found.setdefault(event["run_id"], []).append(event)
    return found


def test_backfill_trains_each_run_on_the_version_current_then_and_keeps_champion(
    airflow_db: Path,
    airflow_api: AirflowApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, repo = tmp_path / "home", tmp_path / "repo"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))  # make_data_repo's DVC remote and events
    monkeypatch.setenv("FLYWHEEL_REPO", str(repo))
    first, second = two_version_repo(repo, dict(os.environ))

    with mlflow_server(tmp_path / "mlflow") as mlflow_url:
        env = scheduler_env(dict(os.environ), airflow_api, MLFLOW_TRACKING_URI=mlflow_url)
        airflow_cli(env, "dags", "reserialize")  # the DAG into the DB, as a dag-processor would
        before = latest_backfill_id()
        created = airflow_cli(
            env,
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            FROM_DATE,
            "--to-date",
            TO_DATE,
            "--dag-run-conf",
            json.dumps(CONF),
            "--max-active-runs",
            "1",
        )
        backfill_id = latest_backfill_id()
        assert backfill_id > before, created.stdout + created.stderr

        scheduler_log = tmp_path / "scheduler.log"  # kept with pytest's tmp_path after the run
        runs: list[dict[str, Any]] = []
        completed, exited = False, None
        started = time.monotonic()
        with running_scheduler(env, scheduler_log) as scheduler:
            # Until the scheduler marks the backfill complete (it checks every 30 s): a backfill
            # left open would refuse the next ``backfill create`` for this DAG in this DB.
            while time.monotonic() - started < TIMEOUT and scheduler.poll() is None:
                runs, completed = backfill_runs(backfill_id), backfill_completed(backfill_id)
                if completed or any(set(r["tasks"].values()) & BROKEN for r in runs):
                    break
                time.sleep(2)
            exited = scheduler.poll()
        runs = backfill_runs(backfill_id)
        print(f"backfill {backfill_id}: complete={completed}, {time.monotonic() - started:.0f} s")

        try:
            assert exited is None, f"the scheduler exited with {exited}"
            check(runs, home / "logs" / "events.jsonl", mlflow_url, first, second)
            assert completed, f"backfill {backfill_id} not marked complete within {TIMEOUT} s"
        except BaseException:
            print(diagnostics(airflow_db, scheduler_log, runs))
            raise


def check(
    runs: list[dict[str, Any]], log_path: Path, mlflow_url: str, first: str, second: str
) -> None:
    # One run per cron tick in the window, each a backfill with the backfill's conf, all green.
    assert [r["logical_date"] for r in runs] == [BETWEEN, AFTER]
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert all(r["conf"] == CONF for r in runs)
    assert [r["state"] for r in runs] == ["success", "success"]
    assert runs[0]["end"] <= runs[1]["start"], "--max-active-runs 1: one run after the other"
    for run in runs:
        tasks = run["tasks"]
        for task_id in ("resolve_dataset", "prepare", "checks", "train", "validate"):
            assert tasks[task_id] == "success", (task_id, tasks)
        # Evaluated only: the branch keeps champion, no approval asked, nothing deployed.
        assert tasks["register_if_better"] == "success"
        assert tasks["backfill_keeps_champion"] == "success"
        for task_id in ("registration_skipped", "await_approval", "deploy", "record_rejection"):
            assert tasks[task_id] == "skipped", (task_id, tasks)

    events = events_by_run(log_path)
    expected = dict(zip([r["run_id"] for r in runs], [first, second], strict=True))
    images = {first: 1797, second: 1817}
    for run_id, version in expected.items():
        by_action = {e["action"]: e for e in events.get(run_id, [])}
        resolved = by_action["dataset_resolved"]
        assert (resolved["dataset_version"], resolved["source"]) == (version, "as-of"), resolved
        assert by_action["prepared"]["dataset_version"] == version
        assert by_action["prepared"]["prepared"] == images[version]
        trained = by_action["trained"]
        assert (trained["task_id"], trained["dataset_version"]) == ("train", version)
        decided = by_action["registration_decided"]
        assert (decided["task_id"], decided["dataset_version"]) == ("validate", version)
        # The verdict a normal run would act on, recorded; nothing registered, so the second
        # run has no incumbent either.
        assert (decided["decision"], decided["evaluate_only"]) == ("register", True), decided
        assert decided.get("model_version") is None and decided.get("incumbent_version") is None
        gate = by_action["gate_decided"]
        assert (gate["gate"], gate["decision"]) == ("register_if_better", "backfill_keeps_champion")
        assert "nothing registered" in gate["reason"], gate
        assert not [e for e in events[run_id] if e["action"] == "alias_moved"]

        # MLflow agrees: the run's lineage tags name the version and the logical date.
        tags = {
            t["key"]: t["value"]
            for t in mlflow_get(mlflow_url, "runs/get", run_id=trained["mlflow_run_id"])["run"][
                "data"
            ]["tags"]
        }
        logical_date = next(r["logical_date"] for r in runs if r["run_id"] == run_id)
        assert tags["flywheel.dataset_version"] == version
        assert tags["flywheel.logical_date"] == logical_date
        assert tags["flywheel.caller_run_id"] == run_id
        assert (tags["flywheel.decision"], tags["flywheel.evaluate_only"]) == ("register", "true")

    # The registry was never touched: no model, no version, no alias.
    assert champion(mlflow_url) is None
    assert mlflow_get(mlflow_url, "registered-models/search").get("registered_models", []) == []
