"""The index of dataset versions (``data/versions.jsonl``): recording one, and finding one by date.

Every version is listed with its creation time, so a backfill for date D trains on the data as
of D; its git revision is the commit whose ``data/images.dvc`` records it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError
from ml_tasks.data.dvc import (
    DVC_FILE,
    configure_remote,
    git,
    run_dvc,
    tracked_version,
    workspace_matches,
)

INDEX_FILE = Path("data/versions.jsonl")


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    created_at: datetime
    images: int
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "images": self.images,
            "note": self.note,
        }


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.glob("*/*") if p.is_file()) if folder.exists() else 0


def add_version(settings: Settings, note: str, *, when: datetime | None = None) -> DatasetVersion:
    """Record ``data/images`` as a dataset version: ``dvc add``, push, and index it."""
    run_dvc(settings, "add", "--quiet", "data/images")
    version = tracked_version(settings)
    if version is None:
        raise StepError("dvc add wrote no hash to data/images.dvc")
    configure_remote(settings)
    run_dvc(settings, "push", "--quiet", "-r", settings.dvc_remote, str(DVC_FILE))
    entry = DatasetVersion(
        version, when or datetime.now(UTC), count_images(settings.data_dir), note
    )
    if all(v.version != version for v in read_index(settings)):
        with (settings.repo / INDEX_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry.to_json()) + "\n")
    events.emit("dataset_version_recorded", dataset_version=version, images=entry.images, note=note)
    return entry


def read_index(settings: Settings) -> list[DatasetVersion]:
    path = settings.repo / INDEX_FILE
    if not path.exists():
        return []
    versions = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            versions.append(
                DatasetVersion(
                    row["version"],
                    datetime.fromisoformat(row["created_at"]),
                    int(row["images"]),
                    row.get("note", ""),
                )
            )
    return sorted(versions, key=lambda v: v.created_at)


def version_as_of(settings: Settings, when: datetime) -> DatasetVersion:
    """The newest dataset version created at or before ``when`` (for backfills)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    candidates = [v for v in read_index(settings) if v.created_at <= when]
    if not candidates:
        raise StepError(f"no dataset version existed at {when.isoformat()} (see {INDEX_FILE})")
    return candidates[-1]


def revision_of(settings: Settings, version: str) -> str:
    """The git commit whose ``data/images.dvc`` records ``version``."""
    for rev in git(settings, "log", "--format=%H", "--", DVC_FILE.as_posix()).split():
        if tracked_version(settings, rev) == version:
            return rev
    raise StepError(f"dataset version {version} is not recorded in any git commit of {DVC_FILE}")


def checkout_version(settings: Settings, version: str, dest: Path) -> Path:
    """A folder holding dataset ``version``: the work tree when it matches, else fetched via DVC.

    Fetching reads the version at its git revision through DVC's file system, from the DVC
    remote (what a pod does: it has the code and the remote, not the files).
    """
    if tracked_version(settings) == version and workspace_matches(settings):
        return settings.data_dir
    return fetch_version(settings, version, dest)


def fetch_version(settings: Settings, version: str, dest: Path) -> Path:
    """``dest/<version>``: the version's files read through DVC at its git revision (once)."""
    target = dest / version
    if (target / ".complete").exists():
        return target
    from dvc.api import DVCFileSystem

    configure_remote(settings)
    rev = revision_of(settings, version)
    fs = DVCFileSystem(str(settings.repo), rev=rev, remote=settings.dvc_remote)
    partial = dest / f".{version}.partial"
    fs.get("data/images", str(partial), recursive=True)
    partial.rename(target)
    (target / ".complete").touch()
    events.emit("dataset_fetched", dataset_version=version, revision=rev)
    return target
