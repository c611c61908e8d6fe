"""Template macros that turn run values into step arguments, so a DAG file's templates hold a
value and nothing else (``{{ option('--epochs', params.epochs) }}``).

An empty string is "no argument": ``StepOperator`` drops empty arguments after rendering.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flywheel_airflow.gates import is_backfill


def option(flag: str, value: object) -> str:
    """``--flag=value``, or no argument when ``value`` is ``None`` (an unset param).

    Dates are written in ISO 8601, as the steps' ``fromisoformat`` arguments read them.
    """
    if value is None:
        return ""
    return f"{flag}={value.isoformat() if isinstance(value, datetime) else value}"


def switch(flag: str, on: object) -> str:
    """``--flag`` when ``on`` is true, else no argument."""
    return flag if on else ""


def backfill_date(dag_run: Any) -> datetime | None:
    """A backfill run's logical date (the past it re-trains on), else ``None``."""
    return dag_run.logical_date if is_backfill(dag_run) else None


def study_name(run_id: str) -> str:
    """``tuning-<run id>`` without the ``:`` and ``+`` of a timestamp (Optuna names)."""
    return "tuning-" + re.sub(r"[:+]", "", run_id)


MACROS: dict[str, Callable[..., Any]] = {
    "option": option,
    "switch": switch,
    "backfill_date": backfill_date,
    "study_name": study_name,
}
