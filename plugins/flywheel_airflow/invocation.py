"""How a step is invoked, the same on every backend: its interpreter, command line and ids.

The operators and the backends both build step commands from these, so they live apart from
both. Nothing here imports Airflow: the development tools and the tests, which run in either
environment, find the steps interpreter the same way the operator does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def steps_python() -> str:
    """The interpreter of the steps environment (``make steps-env`` creates it).

    ``FLYWHEEL_STEPS_PYTHON`` wins; in a checkout, ``.venvs/steps``; else this interpreter.
    """
    if env := os.environ.get("FLYWHEEL_STEPS_PYTHON"):
        return env
    candidate = REPO / ".venvs" / "steps" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def step_command(step: str, arguments: Sequence[str]) -> list[str]:
    """The command line of a step, the same on every backend (minus the interpreter path)."""
    return ["-m", f"ml_tasks.{step}", *[str(a) for a in arguments]]


def airflow_env(context: Any) -> dict[str, str]:
    """The ids a step stamps on its events, as Airflow names them for subprocesses."""
    ti = context["ti"]
    return {
        "AIRFLOW_CTX_DAG_ID": str(ti.dag_id),
        "AIRFLOW_CTX_DAG_RUN_ID": str(context["run_id"]),
        "AIRFLOW_CTX_TASK_ID": str(ti.task_id),
        "AIRFLOW_CTX_TRY_NUMBER": str(getattr(ti, "try_number", "")),
    }
