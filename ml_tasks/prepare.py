"""Prepare: decode and check every image, split it, and write the arrays the model trains on.

Reads a dataset version (``data/images/<class>/*``) and writes ``prepared/<dataset version>/``
to the lake (:mod:`ml_tasks.data.prepared_writer`). Each image's split follows from its content
hash alone (:mod:`ml_tasks.data.splits`), so it never moves as the dataset grows.

- **Incremental**: decoded pixels are cached by content hash (see
  :mod:`ml_tasks.data.prepare_cache`); a re-run reads and decodes only images it has not seen.
- **The version asked for**: a dataset version is prepared from DVC's record of it (path ->
  md5): a file seen before is known by its md5 and not opened; a new one is read from DVC's
  cache or the work tree, and only when its md5 is the recorded one. Whatever the work tree
  holds, what is prepared is the version; when a file cannot be read here, or DVC's record is
  not, the version is fetched through DVC.
- **A plain folder** (``--data-dir``): a file's hash is remembered with its size and mtime,
  like git's index, so a re-run costs one ``stat`` per file seen before.
- **Nothing is lost**: a file that cannot be used is quarantined with its reason
  (:mod:`ml_tasks.data.quarantine`), an entry that is not an image file to read is skipped
  (:mod:`ml_tasks.data.scan`); ``prepared + quarantined + skipped == offered`` always holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.lake import open_lake
from ml_tasks.core.options import DatasetVersion, NoProgress, ResultPath
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import StepError
from ml_tasks.core.workspace import writable_repo
from ml_tasks.data.dvc import VersionNotLocal, local_version, tracked_version
from ml_tasks.data.images import content_hash
from ml_tasks.data.prepare_images import Images, Prepared, prepare_images
from ml_tasks.data.prepared_writer import PrepareResult, write_prepared
from ml_tasks.data.scan import list_images
from ml_tasks.data.splits import splits_of
from ml_tasks.data.versions import checkout_version, fetch_version

# The totals of a run its ``prepared`` event carries, in this order.
PREPARED_EVENT_TOTALS = (
    "offered",
    "images_in",
    "prepared",
    "quarantined",
    "skipped",
    "label_conflicts",
    "decoded",
    "from_cache",
)


def folder_version(data_dir: Path) -> str:
    """The version name of a plain folder: a hash of the paths prepare would read in it."""
    return "dir-" + content_hash("\n".join(list_images(data_dir)).encode())[:16]


def prepare(
    settings: Settings,
    *,
    dataset_version: str | None = None,
    data_dir: Path | None = None,
    progress: bool = False,
) -> PrepareResult:
    """The whole step: resolve the dataset version, prepare it, write it to the lake."""
    params: dict[str, Any] = load_params(settings.params_path)["prepare"]
    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in params["classes"]]

    def prepare_from(images: Images) -> Prepared:
        return prepare_images(
            images,
            dataset_version=version,
            lake=lake,
            cache_dir=settings.home / "cache" / "prepare",
            params=params,
            progress=progress,
        )

    if data_dir is not None:
        if not data_dir.is_dir():
            raise StepError(f"--data-dir {data_dir} is not a folder")
        version = dataset_version or folder_version(data_dir)
        prepared = prepare_from(data_dir)
    else:
        version = dataset_version or tracked_version(settings) or ""
        if not version:
            raise StepError(
                "no dataset version: run `python -m ml_tasks.dataset materialize` first"
            )
        prepared = prepare_version(settings, version, prepare_from)
    splits = splits_of(prepared.hashes, params["split"])
    result = write_prepared(lake, prepared, splits, classes)
    report_prepared(result, prepared)
    return result


def prepare_version(
    settings: Settings, version: str, prepare_from: Callable[[Images], Prepared]
) -> Prepared:
    """Prepare a dataset version from DVC's record of it on this machine when there is one
    (files seen before are known by md5 and not opened; no ``dvc status``, no checkout), else
    from a checkout; fetched through DVC when a file cannot be read here."""
    datasets = settings.home / "datasets"  # versions fetched through DVC, one folder each
    files = local_version(settings, version)
    if files is None:
        return prepare_from(checkout_version(settings, version, datasets))
    try:
        return prepare_from(files)
    except VersionNotLocal as exc:
        events.emit("dataset_not_local", dataset_version=version, detail=str(exc))
        return prepare_from(fetch_version(settings, version, datasets))


def report_prepared(result: PrepareResult, prepared: Prepared) -> None:
    """The events of a finished run: each quarantined image, the skipped entries by reason,
    then the totals."""
    version = result.dataset_version
    for item in prepared.quarantined:
        events.emit(
            "image_quarantined",
            dataset_version=version,
            path=item.path,
            reason=item.reason,
            detail=item.detail,
        )
    for reason, count in result.skipped_by_reason.items():
        events.emit(
            "entries_skipped",
            level="warning",
            dataset_version=version,
            reason=reason,
            count=count,
            paths=[s.path for s in prepared.skipped if s.reason == reason][:20],
        )
    totals = {name: getattr(result, name) for name in PREPARED_EVENT_TOTALS}
    events.emit("prepared", dataset_version=version, **totals)


app = command_app()


@app.command(
    epilog="A version is prepared from DVC's record of it when this machine has it: files "
    "seen before are not opened, new ones are read from DVC's cache or the work tree when "
    "their md5 is the recorded one. Otherwise the version is fetched through DVC from the "
    "remote. Unusable files go to quarantine/prepare/ with a reason."
)
def prepare_command(
    dataset_version: DatasetVersion = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="prepare a plain folder of <class>/<image> instead"),
    ] = None,
    no_progress: NoProgress = False,
    result_path: ResultPath = None,
) -> None:
    """Decode, check and split a dataset version into prepared/<version>/."""
    report(
        "prepare",
        lambda: prepare(
            # A pod's /workspace is read-only: DVC writes in a clone.
            writable_repo(load_settings()),
            dataset_version=dataset_version,
            data_dir=data_dir,
            progress=not no_progress,
        ),
        result_path=result_path,
        dataset_version=dataset_version,
    )


main = entry_point(app, "ml_tasks.prepare")

if __name__ == "__main__":
    raise SystemExit(main())
