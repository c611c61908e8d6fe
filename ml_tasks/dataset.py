"""The versioned image dataset: ``data/images/<class>/<content hash>.png``, tracked by DVC.

Commands (``python -m ml_tasks.dataset --help``):

- ``materialize``: make ``data/images`` match ``data/images.dvc``: pull it from the DVC remote,
  or, on a fresh clone with an empty remote, write scikit-learn's bundled digits (1,797 real
  8x8 images; deterministic, so the hash matches the committed one) and push them.
- ``synth``: write synthetic labelled images of any count and size, for scale tests.
- ``versions`` / ``as-of DATE``: the index of versions, and the version current at a date.

The library is in :mod:`ml_tasks.data` (``materialize``, ``dvc``, ``versions``, ``synthetic``).
Outputs are printed as indented JSON; a refused input (a date before any version) exits 3.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.exit_codes import EXIT_STEP_ERROR
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError
from ml_tasks.data.materialize import materialize
from ml_tasks.data.synthetic import synthesize
from ml_tasks.data.versions import read_index, version_as_of

app = command_app(
    help="The versioned image dataset: data/images/<class>/<hash>.png, tracked by DVC."
)


def show(body: Callable[[], Any]) -> None:
    """Print what ``body`` returns as indented JSON; a refused input ends with exit 3."""
    events.configure("dataset")
    try:
        out = body()
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_STEP_ERROR) from exc
    print(json.dumps(out, indent=2))


@app.command("materialize")
def materialize_command() -> None:
    """Pull data/images from DVC, or write the digits on a fresh clone."""
    show(lambda: asdict(materialize(load_settings())))


@app.command()
def synth(
    out: Annotated[
        Path, typer.Option(help="folder to write <class>/<hash>.png into", show_default=False)
    ],
    count: Annotated[int, typer.Option(min=0, help="how many images", show_default=False)],
    size: Annotated[int, typer.Option(min=4, help="width and height in pixels")] = 8,
    classes: Annotated[int, typer.Option(min=2, help="number of classes")] = 10,
    seed: Annotated[int, typer.Option(help="the random seed")] = 0,
) -> None:
    """Write synthetic labelled images (scale tests, benchmarks)."""
    show(lambda: {"written": synthesize(out, count=count, size=size, classes=classes, seed=seed)})


@app.command()
def versions() -> None:
    """List dataset versions, oldest first."""
    show(lambda: [v.to_json() for v in read_index(load_settings())])


@app.command("as-of")
def as_of(
    when: Annotated[
        datetime,
        typer.Argument(
            parser=datetime.fromisoformat, metavar="WHEN", help="a date or time (ISO 8601)"
        ),
    ],
) -> None:
    """The dataset version current at a date (ISO 8601)."""
    show(lambda: version_as_of(load_settings(), when).to_json())


main = entry_point(app, "ml_tasks.dataset")

if __name__ == "__main__":
    raise SystemExit(main())
