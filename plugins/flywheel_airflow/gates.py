"""The training DAG's gates, as plain functions the DAG's tasks call.

- :func:`route_after_validation`: where a run goes once ``validate`` decided (register-if-better).
- :func:`is_backfill`: backfill runs never move ``champion``, so they never reach approval.
- :func:`approval_timeout`: how long the approval waits before it counts as Reject.
- :func:`approval_responder`, :func:`rejection_reason`: what ``deploy`` and
  ``record_rejection`` take from the approval; with no decision behind them (the approval task
  marked success by hand) they skip, so nothing deploys without a person's answer.
- :func:`record_gate`: every gate decision is an audit event (``ml_tasks.core.events``) and, when
  the Airflow REST API is configured, the DAG run's note, so the reason is visible in the UI.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from flywheel_airflow.rest_api import API_CONN_ID, AirflowApi, ApiError

log = logging.getLogger(__name__)

AWAIT_APPROVAL = "await_approval"
REGISTRATION_SKIPPED = "registration_skipped"
BACKFILL_KEEPS_CHAMPION = "backfill_keeps_champion"


def approval_timeout() -> timedelta:
    """How long an approval waits before it counts as Reject: ``FLYWHEEL_APPROVAL_TIMEOUT``.

    Default 24 h. In seconds; read from the environment when the DAG file is parsed (no
    Variable lookup at parse time), so the dag-processor's environment decides it.
    """
    raw = os.environ.get("FLYWHEEL_APPROVAL_TIMEOUT", "").strip()
    if not raw:
        return timedelta(hours=24)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"FLYWHEEL_APPROVAL_TIMEOUT={raw!r}: give a number of seconds above 0")
    return timedelta(seconds=seconds)


def is_backfill(dag_run: Any) -> bool:
    """True for runs created by ``airflow backfill create`` (run type, or the run id it makes)."""
    run_type = getattr(dag_run, "run_type", None)
    run_type = str(getattr(run_type, "value", run_type) or "")  # the enum's value, or a string
    run_id = str(getattr(dag_run, "run_id", "") or "")
    return run_type == "backfill" or run_id.startswith("backfill__")


def route_after_validation(decision: dict[str, Any], *, backfill: bool) -> tuple[str, str]:
    """The next task and the reason, from ``validate``'s result.

    A backfill evaluates only (its validate registers nothing): it records how a model trained
    on past data compares, and never asks for approval or moves an alias.
    """
    if backfill:
        verdict = "better" if decision.get("decision") == "register" else "not better"
        return BACKFILL_KEEPS_CHAMPION, (
            f"backfill: evaluated only, {verdict} than the incumbent; nothing registered, "
            f"no alias moved, no approval ({decision.get('reason', 'no reason')})"
        )
    if not decision.get("registered"):
        return REGISTRATION_SKIPPED, f"registration skipped: {decision.get('reason', 'no reason')}"
    version = decision.get("model_version")
    return (
        AWAIT_APPROVAL,
        f"registered v{version} as challenger ({decision.get('reason')}); awaiting approval",
    )


def approval_decision(ti: Any, *, approved: bool) -> dict[str, Any]:
    """The approval's decision, for the task on its ``approved`` (or rejected) branch.

    Skips that task (never fails it: a retry cannot make a decision appear) when there is no
    decision, which happens when someone marks ``await_approval`` success by hand, or when the
    decision belongs to the other branch. No decision is no approval: nothing deploys.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    decision = ti.xcom_pull(task_ids=AWAIT_APPROVAL, key="decision")
    if not isinstance(decision, dict):
        version = (ti.xcom_pull(task_ids="validate") or {}).get("model_version")
        message = (
            f"{AWAIT_APPROVAL} finished without a decision (was it marked success by hand?): "
            f"that is no approval, so nothing is deployed and model version {version} stays "
            f"challenger. To decide, clear {AWAIT_APPROVAL} and answer it as an approver in "
            "Browse → Required Actions."
        )
        if approved:  # one event per run: the deploy side reports it
            from ml_tasks.core import events

            events.configure("airflow", logger=log)
            events.emit(
                "gate_decided",
                level="warning",
                gate="approval",
                decision="none",
                reason=message,
                model_version=version,
            )
        raise AirflowSkipException(message)
    if bool(decision.get("approved")) != approved:
        raise AirflowSkipException(
            f"the approval's answer was {decision.get('choice')!r} by {decision.get('who')}: "
            "this branch does not apply"
        )
    return decision


def approval_responder(ti: Any, *, approved: bool) -> str:
    """Who answered the approval (``timeout`` when nobody did); see :func:`approval_decision`."""
    return str(approval_decision(ti, approved=approved)["who"])


def rejection_reason(ti: Any) -> str:
    if approval_decision(ti, approved=False).get("timed_out"):
        return "no answer before the approval timed out"
    return "rejected at the approval gate"


def record_gate(context: Any, gate: str, decision: str, reason: str, **ids: Any) -> None:
    """Log the decision, emit the audit event, and put the reason in the run's note."""
    from ml_tasks.core import events

    events.configure("airflow", logger=log)
    dag_run = context["dag_run"]
    log.info("%s: %s — %s", gate, decision, reason)
    events.emit(
        "gate_decided",
        gate=gate,
        decision=decision,
        reason=reason,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        task_id=context["ti"].task_id,
        **ids,
    )
    set_run_note(dag_run.dag_id, dag_run.run_id, f"{gate}: {reason}")


def set_run_note(dag_id: str, run_id: str, note: str) -> bool:
    """Set the DAG run's note through the REST API (connection ``flywheel_airflow_api``).

    Tasks have no database access in Airflow 3 and the Task SDK cannot write notes, so this
    makes the same call as the UI's note editor. Without the connection the note is skipped
    (the reason is still in the task log and the event log); returns whether it was set.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(API_CONN_ID)
    except AirflowNotFoundException as exc:
        log.info("run note not set (no %s connection: %s)", API_CONN_ID, type(exc).__name__)
        return False
    user = conn.login or ""
    base = f"{conn.schema or 'http'}://{conn.host}:{conn.port}"
    try:
        AirflowApi(base, {user: conn.password or ""}, timeout=10).set_note(
            dag_id, run_id, note, user
        )
    except (OSError, ApiError) as exc:  # urllib's URLError is an OSError
        log.warning("run note not set: %s", exc)
        return False
    return True
