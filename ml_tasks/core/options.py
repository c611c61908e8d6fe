"""The options several commands share, declared once (a parameter's name gives its flag)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ResultPath = Annotated[
    Path | None,
    typer.Option(
        "--result-path",
        help="where to write the step's JSON result (default: /airflow/xcom/return.json in a "
        "pod, else none: the result is printed on stdout)",
        show_default=False,
    ),
]

DatasetVersion = Annotated[
    str | None,
    typer.Option(
        help="the dataset version (default: the one data/images.dvc records in the work tree)",
        show_default=False,
    ),
]
CallerRunId = Annotated[
    str | None, typer.Option(help="the orchestrator's run id, kept as a lineage tag")
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="hide the progress bar")]
