"""Resolve which dataset version a training run uses: the first step of the training DAG.

- A backfill for date D trains on the version that was current at D (``--as-of D``, from the
  index of versions in ``data/versions.jsonl``), so re-running history reproduces history.
- Any other run trains on the current version (the one ``data/images.dvc`` records, else the
  newest in the index), unless the caller names one (``--dataset-version``).

The answer is the step's JSON result, so every later task reads the same version from XCom.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import typer

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.options import ResultPath
from ml_tasks.core.settings import Settings, load_settings
from ml_tasks.core.step import StepError


def resolve_dataset_version(given: str | None) -> str:
    """``given``, or the version ``data/images.dvc`` records in the work tree."""
    if given:
        return given
    from ml_tasks.data.dvc import tracked_version

    version = tracked_version(load_settings())
    if version is None:
        raise StepError("no --dataset-version given and data/images.dvc records none")
    return version


@dataclass(frozen=True)
class ResolvedDataset:
    """The version every later task of the run reads, and why it is that one."""

    dataset_version: str
    source: str  # "given", "as-of" or "current"
    as_of: str | None
    created_at: str | None
    images: int | None


def resolve(
    settings: Settings, *, as_of: datetime | None = None, dataset_version: str | None = None
) -> ResolvedDataset:
    from ml_tasks.data.dvc import tracked_version
    from ml_tasks.data.versions import read_index, version_as_of

    index = {v.version: v for v in read_index(settings)}
    if dataset_version:
        source, version = "given", dataset_version
    elif as_of is not None:
        source, version = "as-of", version_as_of(settings, as_of).version
    else:
        version = tracked_version(settings) or (list(index)[-1] if index else "")
        source = "current"
        if not version:
            raise StepError("no dataset version yet: run `python -m ml_tasks.dataset materialize`")
    entry = index.get(version)
    events.emit(
        "dataset_resolved",
        dataset_version=version,
        source=source,
        as_of=as_of.isoformat() if as_of else None,
    )
    return ResolvedDataset(
        dataset_version=version,
        source=source,
        as_of=as_of.isoformat() if as_of else None,
        created_at=entry.created_at.isoformat() if entry else None,
        images=entry.images if entry else None,
    )


app = command_app()


@app.command()
def resolve_dataset(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            parser=datetime.fromisoformat,
            metavar="WHEN",
            help="use the version current at this time (ISO 8601; backfills)",
        ),
    ] = None,
    dataset_version: Annotated[
        str | None, typer.Option(help="use this version (overrides --as-of)")
    ] = None,
    result_path: ResultPath = None,
) -> None:
    """Resolve which dataset version a training run uses."""
    given = dataset_version or None  # an empty value from a template means "not given"
    report(
        "resolve_dataset",
        lambda: resolve(load_settings(), as_of=as_of, dataset_version=given),
        result_path=result_path,
    )


main = entry_point(app, "ml_tasks.resolve_dataset")

if __name__ == "__main__":
    raise SystemExit(main())
