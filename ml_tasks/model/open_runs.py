"""Runs a failed step leaves open: close them with one quick request, or keep a record so
that the next train marks them FAILED.

A run that stays RUNNING after its step died misleads whoever reads the experiment; closing it
must not wait out MLflow's whole retry budget (the step is failing already), so the close is one
short attempt, and what it cannot close is written to ``<home>/unfinished_mlflow_runs.jsonl``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.model.tracking import is_unreachable, what_failed

# One attempt, shortly: for closing a run after a failure, which must not wait out a budget.
QUICK_REQUEST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
UNFINISHED_RUNS = "unfinished_mlflow_runs.jsonl"


@contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow requests in this block make one short attempt (MLflow reads these per request)."""
    saved = {name: os.environ.get(name) for name in QUICK_REQUEST}
    os.environ.update(QUICK_REQUEST)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _unfinished_runs(settings: Settings) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """The record of runs left RUNNING (read and rewritten under a lock: trains may overlap)."""
    path = settings.home / UNFINISHED_RUNS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{UNFINISHED_RUNS}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if (path.exists())
            else []
        )
        yield path, entries


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp.replace(path)


def close_run_after_failure(settings: Settings, run_id: str, exc: BaseException) -> bool:
    """Mark the step's run FAILED with one quick request; if that fails too, record it.

    Ending the fluent run also clears MLflow's stack of active runs, so its exit hook does not
    try again for a whole retry budget. Returns whether the run is marked FAILED now.
    """
    import mlflow

    try:
        with quick_requests():
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run("FAILED")
            else:
                mlflow.MlflowClient().set_terminated(run_id, "FAILED")
        return True
    except Exception as end_exc:
        # The step is failing with ``exc`` already: keep that one, and make this one visible.
        events.emit(
            "mlflow_run_left_open",
            level="warning",
            mlflow_run_id=run_id,
            tracking_uri=settings.tracking_uri,
            error=what_failed(end_exc),
            detail="the next train step that reaches this server marks it FAILED",
        )
        with _unfinished_runs(settings) as (path, entries):
            entries.append(
                {
                    "tracking_uri": settings.tracking_uri,
                    "run_id": run_id,
                    "reason": f"the step failed ({type(exc).__name__}) and could not close it",
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            _write_entries(path, entries)
        return False


def fail_abandoned_runs(
    settings: Settings, experiment_id: str, caller_run_id: str | None
) -> list[str]:
    """Mark FAILED the runs an earlier step could not close; returns their ids.

    Two sources: the local record :func:`close_run_after_failure` keeps, and, inside Airflow,
    RUNNING runs of earlier tries of the same task in the same DAG run (a pod's record is gone
    with the pod, and Airflow runs one try of a task at a time, so those are dead).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    why: dict[str, str] = {}
    with _unfinished_runs(settings) as (path, entries):
        for entry in entries:
            if entry.get("tracking_uri") == settings.tracking_uri:
                why[str(entry["run_id"])] = str(entry.get("reason", "left open"))
    task_id = os.environ.get("AIRFLOW_CTX_TASK_ID")
    if caller_run_id and task_id and "'" not in caller_run_id + task_id:
        for run in client.search_runs(
            [experiment_id],
            filter_string=(
                "attributes.status = 'RUNNING' and "
                f"tags.`flywheel.caller_run_id` = '{caller_run_id}' and "
                f"tags.`flywheel.task_id` = '{task_id}'"
            ),
        ):
            why.setdefault(run.info.run_id, "an earlier try of this task ended without closing it")
    marked = []
    for run_id, reason in why.items():
        try:
            status = client.get_run(run_id).info.status
        except MlflowException as exc:
            if is_unreachable(exc):
                raise
            status = "DELETED"  # gone from the server: nothing left to close
        if status == "RUNNING":
            client.set_tag(run_id, "flywheel.failure", reason)
            client.set_terminated(run_id, "FAILED")
            events.emit(
                "mlflow_run_marked_failed", level="warning", mlflow_run_id=run_id, reason=reason
            )
            marked.append(run_id)
    if why:
        with _unfinished_runs(settings) as (path, entries):
            _write_entries(path, [e for e in entries if str(e.get("run_id")) not in why])
    return marked
