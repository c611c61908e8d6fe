"""What happened to a model version, a dataset version or a DAG run: the event log, newest first.

MLflow keeps no history of alias moves and Airflow forgets a run's gate decisions when its
metadata is pruned, so every gate decision and alias move is also an event in the one log
(:mod:`ml_tasks.core.events`). This command answers from that log::

    python -m ml_tasks.audit --model-version 3
    python -m ml_tasks.audit --dataset-version 1f2e... --json
    python -m ml_tasks.audit --run-id manual__2026-11-27T10:00:00+00:00

Filters combine with AND. A model version also matches events that name it as the incumbent
or the previous champion, so a rollback shows up on both versions' histories.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from tabulate import tabulate

from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.events import read_events
from ml_tasks.core.settings import load_settings

MODEL_VERSION_KEYS = ("model_version", "previous_champion", "incumbent_version")
RUN_ID_KEYS = ("run_id", "caller_run_id", "mlflow_run_id")
COLUMNS = ("ts", "component", "action", "who", "model_version", "dataset_version", "run_id")


def matches(
    event: dict[str, Any],
    *,
    model_version: str | None = None,
    dataset_version: str | None = None,
    run_id: str | None = None,
) -> bool:
    """True when the event names every id asked for."""
    if model_version is not None and not any(
        str(event.get(k)) == model_version for k in MODEL_VERSION_KEYS if event.get(k) is not None
    ):
        return False
    if dataset_version is not None and not str(event.get("dataset_version", "")).startswith(
        dataset_version
    ):
        return False
    return run_id is None or any(str(event.get(k)) == run_id for k in RUN_ID_KEYS)


def history(path: Path, **ids: str | None) -> list[dict[str, Any]]:
    """Matching events, newest first (events with equal times keep the log's order, reversed)."""
    found = [e for e in read_events(path) if matches(e, **ids)]
    return sorted(reversed(found), key=lambda e: str(e.get("ts", "")), reverse=True)


# The widest a column's cell may be (a longer value is cut, ending in "…").
WIDTHS = {
    "ts": 29,
    "component": 10,
    "action": 24,
    "who": 14,
    "model_version": 7,
    "dataset_version": 12,
    "run_id": 36,
}


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """A table a person can read: the ids in columns, everything else as ``key=value``."""
    headers = [c.replace("_version", "") for c in COLUMNS] + ["detail"]
    cells = []
    for event in rows:
        rest = {
            k: v
            for k, v in event.items()
            if k not in COLUMNS and k not in ("level", "task_id", "dag_id", "try_number")
        }
        detail = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in rest.items())
        cells.append([_cell(event.get(c), WIDTHS[c]) for c in COLUMNS] + [detail])
    return str(tabulate(cells, headers, disable_numparse=True, stralign="left"))


app = command_app()


@app.command()
def audit(
    model_version: Annotated[
        str | None, typer.Option(help="a registered model version (e.g. 3)")
    ] = None,
    dataset_version: Annotated[
        str | None, typer.Option(help="a dataset version (a prefix is enough)")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="an Airflow DAG run id (or an MLflow run id)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the events as a JSON list")
    ] = False,
    log: Annotated[
        Path | None, typer.Option(help="the event log (default: the configured one)")
    ] = None,
) -> None:
    """What happened to a model version, a dataset version or a DAG run, newest first."""
    if not (model_version or dataset_version or run_id):
        raise typer.BadParameter(
            "give at least one of --model-version, --dataset-version, --run-id"
        )
    path = log or load_settings().log_path
    rows = history(
        path, model_version=model_version, dataset_version=dataset_version, run_id=run_id
    )
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no events match in {path}", file=sys.stderr)


main = entry_point(app, "ml_tasks.audit")

if __name__ == "__main__":
    raise SystemExit(main())
