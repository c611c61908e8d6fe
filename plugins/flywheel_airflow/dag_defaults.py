"""What every Flywheel DAG shares: its start, its owner and how a failed task is retried.

A step that exits 3 (it refused its input) fails without a retry whatever these say (the
operators decide); these retries are for crashes and services that did not answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "flywheel",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
}
# Aware and in UTC: a naive date would be read in the server's time zone.
START_DATE = datetime(2025, 1, 1, tzinfo=UTC)
DATASET_VERSION_PATTERN = "^[0-9a-f]{6,64}$"


def flywheel_dag_args(doc: str | None, *tags: str) -> dict[str, Any]:
    """The ``@dag`` arguments every Flywheel DAG shares.

    No catch-up: unpausing never starts the slots that passed (a backfill is asked for, with
    ``airflow backfill create``); the ``flywheel`` tag is the UI's filter for the loop.
    """
    return {
        "doc_md": doc,
        "start_date": START_DATE,
        "catchup": False,
        "default_args": DEFAULT_ARGS,
        "tags": ["flywheel", *tags],
    }


def optional_param(kind: str, description: str, **schema: Any) -> Param:
    """A form field that may stay empty (``None``): the step then takes its own default."""
    return Param(None, type=["null", kind], description=description, **schema)


def dataset_version_param(description: str) -> Param:
    """An optional dataset version (a DVC content hash), checked by the form before a run."""
    return optional_param("string", description, pattern=DATASET_VERSION_PATTERN)
