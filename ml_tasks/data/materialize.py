"""Make ``data/images`` match ``data/images.dvc``: pull it from the DVC remote, or write the digits.

On a fresh clone with an empty remote, scikit-learn's bundled digits are written instead
(deterministic, so their hash matches the committed one) and recorded as a version.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from ml_tasks.core import events
from ml_tasks.core.settings import Settings
from ml_tasks.data.dvc import DVC_FILE, configure_remote, tracked_version, workspace_matches
from ml_tasks.data.synthetic import write_digits
from ml_tasks.data.versions import add_version, count_images


@dataclass(frozen=True)
class Materialized:
    """The version now in ``data/images``, where it came from, and how many images it holds."""

    dataset_version: str
    source: str  # "workspace", "dvc pull" or "scikit-learn digits"
    images: int


def _pull(settings: Settings) -> subprocess.CompletedProcess[str]:
    """``dvc pull`` of ``data/images.dvc``; a miss is not an error here (the digits follow)."""
    command = [sys.executable, "-m", "dvc", "pull", "--quiet", "-r", settings.dvc_remote]
    return subprocess.run(
        [*command, str(DVC_FILE)], cwd=settings.repo, capture_output=True, text=True
    )


def materialize(settings: Settings) -> Materialized:
    """Make ``data/images`` match ``data/images.dvc``, by pulling or by writing the digits."""
    recorded = tracked_version(settings)
    if recorded and workspace_matches(settings):
        return Materialized(recorded, "workspace", count_images(settings.data_dir))
    if recorded:
        configure_remote(settings)
        pulled = _pull(settings)
        if pulled.returncode == 0 and workspace_matches(settings):
            events.emit("dataset_pulled", dataset_version=recorded, remote=settings.dvc_remote)
            return Materialized(recorded, "dvc pull", count_images(settings.data_dir))
        events.emit(
            "dataset_pull_missed",
            level="warning",
            dataset_version=recorded,
            remote=settings.dvc_remote,
            detail=(pulled.stderr or pulled.stdout).strip()[-500:],
        )
    written = write_digits(settings.data_dir)
    entry = add_version(settings, "scikit-learn digits")
    if recorded and entry.version != recorded:
        events.emit(
            "dataset_differs_from_git",
            level="warning",
            recorded=recorded,
            dataset_version=entry.version,
            detail="the written digits differ from the committed data/images.dvc (another Pillow?)",
        )
    return Materialized(entry.version, "scikit-learn digits", written)
