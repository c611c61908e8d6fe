"""A real Airflow scheduler for the tests that need one (backfills, the approval timeout).

``dag.test()`` runs tasks in-process and never enforces what only the scheduler does: backfill
runs, a human-in-the-loop timeout. These tests start ``airflow scheduler`` (LocalExecutor) on
the session's Airflow DB; its tasks talk to the session's api-server (the execution API).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_airflow.rest_api import AirflowApi

from tools.local_airflow import airflow_cli
from tools.local_servers import stop_process_group

DAG_ID = "training"
BROKEN = {"failed", "upstream_failed", "up_for_retry"}


def scheduler_env(base: dict[str, str], api: AirflowApi, **extra: str) -> dict[str, str]:
    return {
        **base,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Tasks run by the scheduler's LocalExecutor talk to the api-server's execution API.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api.base_url}/execution/",
        # Runs only start on an unpaused DAG, and an unpaused DAG with catchup=False gets a
        # scheduled run for today's 02:00 at once: the scheduler creates no runs of its own
        # here (neither cron nor asset), it only runs the ones a test creates.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        **extra,
    }


def dag_is_paused() -> bool:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return bool(session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == DAG_ID)))


@contextmanager
def running_scheduler(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The DAG unpaused and a scheduler running; afterwards stopped, pause state restored."""
    was_paused = dag_is_paused()
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        airflow_cli(env, "dags", "unpause", DAG_ID)
        with log_path.open("ab") as log:
            scheduler = subprocess.Popen(
                # --skip-serve-logs: no log server on 0.0.0.0:8793 (a fixed port another
                # scheduler may hold); the task logs are files in this AIRFLOW_HOME anyway.
                [str(Path(sys.executable).parent / "airflow"), "scheduler", "--skip-serve-logs"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield scheduler
    finally:
        if scheduler is not None:
            stop_process_group(scheduler)
        if was_paused:
            airflow_cli(env, "dags", "pause", DAG_ID, check=False)


def task_states(run_id: str) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id
            )
        ).all()
    return {task_id: str(getattr(state, "value", state)) for task_id, state in rows}


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def diagnostics(airflow_home: Path, scheduler_log: Path, runs: list[dict[str, Any]]) -> str:
    """The scheduler log's tail and, for every task of the runs not green, its log's tail."""
    parts = [f"runs: {json.dumps(runs, indent=1)}", f"--- {scheduler_log}", tail(scheduler_log, 80)]
    for run in runs:
        folder = airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run['run_id']}"
        for task_id, state in sorted(run["tasks"].items()):
            if state in ("success", "skipped"):
                continue
            for log in sorted(folder.glob(f"task_id={task_id}/**/*.log")):
                parts += [f"--- {log} ({state})", tail(log, 40)]
    return "\n".join(parts)
