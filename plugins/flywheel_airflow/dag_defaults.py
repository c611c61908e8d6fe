"""What every Flywheel DAG shares: its owner and how a failed task is retried.

A step that exits 3 (it refused its input) fails without a retry whatever these say (the
operators decide); these retries are for crashes and services that did not answer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "flywheel",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
}
