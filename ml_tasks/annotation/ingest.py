"""Ingest: validated annotations become a new dataset version (DVC + git).

The newest annotation of each task decides where its image goes
(:mod:`~ml_tasks.annotation.decisions`). Then, if the dataset changed, or a previous run
crashed after ``dvc push`` but before the git commit: ``dvc add``, ``dvc push``, index
(``ml_tasks.data.versions.add_version``), and one git commit of ``data/images.dvc`` +
``data/versions.jsonl`` (:mod:`~ml_tasks.annotation.publish`). Every run then pushes the branch
when the repository has the remote, so a version committed by a run whose push failed is pushed
by the next one. The result says whether the current version is one ingest made
(``announce``): the DAG announces such a version (the dataset Asset) unless an Asset event
already carries it, so a version that was committed but never announced is announced by the
next run, and once only. Every part is idempotent, so a rerun after a crash at any point
finishes the job once.

``python -m ml_tasks.annotation.ingest [--git-remote origin]``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

import typer

from ml_tasks.annotation.decisions import apply_decisions, decide, read_annotations
from ml_tasks.annotation.publish import (
    commit_version,
    push_commit,
    version_commit,
    version_uncommitted,
)
from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point, report
from ml_tasks.core.lake import open_lake
from ml_tasks.core.options import ResultPath
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.workspace import writable_repo


@dataclass(frozen=True)
class Ingested:
    dataset_version: str | None
    new_version: bool
    # The DAG announces a version ingest made unless an Asset event already carries it: a
    # version committed by a run that failed before announcing it is announced now.
    announce: bool
    commit: str | None  # the commit that made the current version, when ingest made it
    pushed: bool | None  # None: the repository has no such remote
    annotations: int
    tasks: int
    incomplete: int
    added: int
    moved: int
    removed: int
    labeled: int
    quarantined: int
    corrected: int


@contextmanager
def ingest_lock(settings: Settings) -> Iterator[None]:
    """One ingest at a time per checkout: two would race on the work tree and git index."""
    lock_dir = settings.repo / ".git" if (settings.repo / ".git").is_dir() else settings.home
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / "flywheel-ingest.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ingest(settings: Settings, git_remote: str) -> Ingested:
    from ml_tasks.data.dvc import tracked_version, workspace_matches
    from ml_tasks.data.versions import add_version

    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in load_params(settings.params_path)["prepare"]["classes"]]
    with ingest_lock(settings):
        annotations = read_annotations(lake)
        decisions, incomplete = decide(annotations, classes)
        counts = apply_decisions(settings, lake, decisions, classes)
        events.emit(
            "annotations_ingested",
            annotations=len(annotations),
            tasks=len(decisions),
            incomplete=incomplete,
            **counts,
        )
        changed = not workspace_matches(settings) or version_uncommitted(settings)
        version, entry = tracked_version(settings), None
        note = f"{counts['labeled']} annotated, {counts['quarantined']} quarantined"
        if changed:
            entry = add_version(settings, note)
            version = entry.version
            commit_version(settings, version, note)
        made_by_ingest = version_commit(settings)
        if entry is not None:
            events.emit(
                "dataset_version_created",
                dataset_version=version,
                commit=made_by_ingest,
                images=entry.images,
                **counts,
            )
        # After the commit, in every run: a version whose push failed last time goes out now.
        pushed = push_commit(settings, git_remote)
        if pushed:
            events.emit(
                "dataset_version_pushed",
                dataset_version=version,
                commit=made_by_ingest,
                remote=git_remote,
                finished_earlier_version=not changed,
            )
    return Ingested(
        dataset_version=version,
        new_version=changed,
        announce=made_by_ingest is not None,
        commit=made_by_ingest,
        pushed=pushed,
        annotations=len(annotations),
        tasks=len(decisions),
        incomplete=incomplete,
        **counts,
    )


GitRemote = Annotated[
    str, typer.Option(help="push the version commit to this remote when it exists")
]
app = command_app()


@app.command()
def command(git_remote: GitRemote = "origin", result_path: ResultPath = None) -> None:
    """Add validated annotations (labeled/ in the lake) to a new dataset version."""
    report(
        "ingest",
        # A pod's /workspace is read-only: commit in a clone that pushes to FLYWHEEL_GIT_URL.
        lambda: ingest(writable_repo(load_settings(), needs_remote=True), git_remote),
        result_path=result_path,
    )


main = entry_point(app, "ml_tasks.annotation.ingest")

if __name__ == "__main__":
    raise SystemExit(main())
