"""The options of the batch steps (claim, preannotate, tasks) and how they run as a step.

A batch is named after the orchestrator's run (``--run-id``), so a retried run finds its own
batch again; ``--batch`` names one explicitly. Exactly one of the two is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ml_tasks.annotation.batches import batch_id
from ml_tasks.core.command import report
from ml_tasks.core.settings import Settings, load_settings
from ml_tasks.core.step import StepResult

RunId = Annotated[
    str | None,
    typer.Option("--run-id", help="the orchestrator run id; the batch is derived from it"),
]
Batch = Annotated[
    str | None,
    typer.Option("--batch", help="an explicit batch name (letters, digits, . _ -)"),
]


def batch_of(run_id: str | None, batch: str | None) -> str:
    """The batch the options name; a usage error (exit 2) unless exactly one was given."""
    if (run_id is None) == (batch is None):
        raise typer.BadParameter("give exactly one of them", param_hint="'--run-id' / '--batch'")
    return batch if batch is not None else batch_id(str(run_id))


def report_batch(
    component: str,
    options: tuple[str | None, str | None, Path | None],
    body: Callable[[Settings, str], StepResult],
) -> None:
    """Run ``body(settings, batch)`` as step ``component``; ``options`` are the command's
    ``--run-id``, ``--batch`` and ``--result-path``."""
    run_id, batch, result_path = options
    name = batch_of(run_id, batch)
    report(component, lambda: body(load_settings(), name), result_path=result_path, batch=name)
