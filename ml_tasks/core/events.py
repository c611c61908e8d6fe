"""Structured events: one JSON line per action, to one log for every component.

Each line has ``ts`` (UTC, ISO 8601), ``component``, ``action`` and the ids that join events
across systems: ``dag_id``, ``run_id``, ``task_id`` (taken from the ``AIRFLOW_CTX_*`` variables
Airflow exports to tasks and the step backends pass on), ``mlflow_run_id``, ``model_version``,
``dataset_version``, ``batch``. Lines go to stderr (a pod's log, which the cluster's collector
reads; stdout stays free for a command's own output), or, inside an Airflow task, to the task's
logger at the event's level (Airflow files a task's raw stderr as ERROR), and are appended to a
local file
(``FLYWHEEL_LOG_PATH``) that ``python -m ml_tasks.audit`` queries. Secrets never reach the
log: keys that name credentials are masked, and so are passwords embedded in URIs.

Nothing is configured at import time: a CLI entry point calls :func:`configure`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|api_key|access_key)", re.I)
_URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_AIRFLOW_IDS = {
    "dag_id": "AIRFLOW_CTX_DAG_ID",
    "run_id": "AIRFLOW_CTX_DAG_RUN_ID",
    "task_id": "AIRFLOW_CTX_TASK_ID",
    "try_number": "AIRFLOW_CTX_TRY_NUMBER",
}
MASK = "***"


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class TaskLogger(Protocol):
    """What :func:`configure` needs of a logger: stdlib's, or an Airflow task's ``self.log``."""

    def log(self, level: int, msg: Any, /, *args: Any) -> Any: ...


class _State:
    component = "flywheel"
    path: Path | None = None
    stream: TextIO | None = None
    logger: TaskLogger | None = None


_state = _State()


def redact(value: Any) -> Any:
    """Mask credentials: values under secret-looking keys and passwords inside URIs."""
    if isinstance(value, dict):
        return {
            k: (MASK if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value)
    return value


def configure(
    component: str,
    *,
    path: Path | None = None,
    stream: TextIO | None = None,
    logger: TaskLogger | None = None,
) -> None:
    """Say who is speaking and where lines go; called once by each command's entry point.

    Lines go to ``logger`` when one is given (an Airflow task's own), else to ``stream``
    (stderr by default).
    """
    from ml_tasks.core.settings import load_settings

    _state.component = component
    _state.path = path if path is not None else load_settings().log_path
    _state.logger = logger
    _state.stream = None if logger is not None else (stream if stream is not None else sys.stderr)


def level_of(event: dict[str, Any]) -> int:
    """The :mod:`logging` level an event is logged at (unknown levels count as errors)."""
    return _LEVELS.get(str(event.get("level", "info")), logging.ERROR)


def airflow_ids() -> dict[str, str]:
    """The Airflow ids of the task this process serves, when Airflow started it."""
    return {key: os.environ[env] for key, env in _AIRFLOW_IDS.items() if os.environ.get(env)}


def emit(action: str, *, level: str = "info", **fields: Any) -> dict[str, Any]:
    """Record one action with its ids and counts; returns the event as written."""
    event: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "component": fields.pop("component", _state.component),
        "action": action,
        **airflow_ids(),
        **{k: v for k, v in fields.items() if v is not None},
    }
    event = redact(event)
    line = json.dumps(event, default=str, separators=(",", ":"))
    if _state.logger is not None:
        _state.logger.log(level_of(event), "%s", line)
    elif _state.stream is not None:
        print(line, file=_state.stream, flush=True)
    if _state.path is not None:
        _state.path.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line to a file opened for append: lines from concurrent
        # processes interleave whole, never mid-line.
        with _state.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return event


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events in a log file; lines that are not JSON objects are skipped and counted."""
    events: list[dict[str, Any]] = []
    unreadable = 0
    if not path.exists():
        return events
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                unreadable += 1  # e.g. a line cut short by a crash mid-write
                continue
            if isinstance(parsed, dict):
                events.append(parsed)
            else:
                unreadable += 1
    if unreadable:
        print(f"warning: {unreadable} unreadable line(s) in {path} were skipped", file=sys.stderr)
    return events
