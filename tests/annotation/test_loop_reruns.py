"""The annotation loop's reruns on real servers: a crash at any point, or a remote that is
down, is finished by the next run once, with nothing lost or duplicated.

Reruns after a crash between claim and task creation, and between ``dvc push`` and the
commit; a failed push finished, pushed and announced once by the next run.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from annotation_support import REPO, Loop, run_helper
from loop_support import (
    INTAKE_CONF,
    accept_every_guess,
    dataset_events,
    dataset_files,
    git_log,
    load_dag,
    manual_run_id,
    run_dag,
    tracked_version,
)

pytestmark = pytest.mark.slow


def test_a_crash_between_claim_and_task_creation_loses_and_duplicates_nothing(loop: Loop) -> None:
    x = INTAKE_CONF["min_images"]
    loop.put_incoming(x, seed=201)
    when = datetime(2026, 3, 2, tzinfo=UTC)
    # The run claimed its batch, then its worker died before creating any task.
    steps = str(REPO / ".venvs/steps/bin/python")
    claimed = subprocess.run(
        [
            steps,
            "-m",
            "ml_tasks.annotation.claim",
            "--run-id",
            manual_run_id(when),
            "--max-images",
            "50",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(claimed.stdout.splitlines()[-1])["images"] == x
    assert loop.keys("incoming/") == []
    # Rerunning the same run (a retry, or a clear in the UI) resumes the batch...
    conf = {**INTAKE_CONF, "min_images": 1}
    loop.put_incoming(1, seed=202)  # (one new image arrives: it waits for a later run)
    states = run_dag("intake", when, conf)
    assert states == dict.fromkeys(states, "success"), states
    keys = [t.data["key"] for t in loop.tasks()]
    assert len(keys) == len(set(keys)) == x
    # ...and a second rerun of the same run changes nothing.
    loop.put_incoming(1, seed=203)
    states = run_dag("intake", when, conf)
    assert states == dict.fromkeys(states, "success"), states
    keys = [t.data["key"] for t in loop.tasks()]
    assert len(keys) == len(set(keys)) == x
    assert len(loop.keys("incoming/")) == 4  # two new images (+ sidecars) wait for a new run


def test_a_crash_between_dvc_push_and_commit_finishes_the_version_once(loop: Loop) -> None:
    x = INTAKE_CONF["min_images"]
    loop.put_incoming(x, seed=301)
    states = run_dag("intake", datetime(2026, 3, 3, tzinfo=UTC), INTAKE_CONF)
    assert states == dict.fromkeys(states, "success"), states
    accept_every_guess(loop, x)
    commits = git_log(loop.repo)
    before = dataset_files(loop.repo)
    half = run_helper("half-ingest")  # files, dvc add, dvc push, index; then the crash
    assert half["added"] == x and git_log(loop.repo) == commits
    events_before = len(dataset_events())

    states = run_dag("ingest", datetime(2026, 3, 3, 1, tzinfo=UTC))
    assert states == dict.fromkeys(states, "success"), states
    assert len(git_log(loop.repo)) == len(commits) + 1
    assert len(dataset_files(loop.repo)) == len(before) + x
    index = [
        json.loads(ln)["version"]
        for ln in (loop.repo / "data/versions.jsonl").read_text().splitlines()
    ]
    assert index.count(half["dataset_version"]) == 1
    assert [e["extra"]["dataset_version"] for e in dataset_events()[events_before:]] == [
        half["dataset_version"]
    ]
    # A second rerun: nothing to do.
    states = run_dag("ingest", datetime(2026, 3, 3, 2, tzinfo=UTC))
    assert states["publish_dataset_version"] == "skipped"
    assert len(git_log(loop.repo)) == len(commits) + 1


def refuse_pushes(origin: Path) -> tuple[Path, Path]:
    """Hooks on the bare remote: refuse every push while ``refuse`` exists; log accepted ones."""
    refuse, received = origin / "refuse", origin / "received.log"
    hooks = {
        "pre-receive": f'#!/bin/sh\nif [ -e "{refuse}" ]; then echo down >&2; exit 1; fi\n',
        "post-receive": f'#!/bin/sh\ncat >> "{received}"\n',
    }
    for name, script in hooks.items():
        (origin / "hooks" / name).write_text(script)
        (origin / "hooks" / name).chmod(0o755)
    refuse.touch()
    return refuse, received


def training_queued() -> list[str]:
    """Asset events waiting for the scheduler to start an asset-triggered run, by DAG."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(session.scalars(select(AssetDagRunQueue.target_dag_id)).all())


def unpause(dag_id: str) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))


def test_a_failed_push_is_finished_by_the_next_run_pushed_and_announced_once(
    loop: Loop,
) -> None:
    x = INTAKE_CONF["min_images"]
    loop.put_incoming(x, seed=401)
    states = run_dag("intake", datetime(2026, 3, 4, tzinfo=UTC), INTAKE_CONF)
    assert states == dict.fromkeys(states, "success"), states
    accept_every_guess(loop, x)
    origin = loop.repo.parent / "origin.git"
    refuse, received = refuse_pushes(origin)
    commits = git_log(loop.repo)
    events_before = len(dataset_events())

    # The remote is down: the version is committed here, the push fails, nothing is announced.
    dag = load_dag("ingest")
    dag.get_task("ingest_annotations").retries = 0  # the next run is the retry here
    run = dag.test(
        logical_date=datetime(2026, 3, 4, 1, tzinfo=UTC),
        run_after=datetime(2026, 3, 4, 1, tzinfo=UTC),
    )
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        "ingest_annotations": "failed",
        "publish_dataset_version": "upstream_failed",
    }, states
    assert len(git_log(loop.repo)) == len(commits) + 1
    assert git_log(origin) == commits
    assert len(dataset_events()) == events_before

    # The remote is back; the next run has nothing new to add, but finishes the version.
    refuse.unlink()
    unpause("training")
    assert "training" not in training_queued()
    states = run_dag("ingest", datetime(2026, 3, 4, 2, tzinfo=UTC))
    assert states == dict.fromkeys(states, "success"), states
    log = git_log(loop.repo)
    assert len(log) == len(commits) + 1  # one commit
    assert git_log(origin) == log
    assert len(received.read_text().splitlines()) == 1  # one push
    new_events = dataset_events()[events_before:]
    version = tracked_version(loop.repo)
    assert [e["extra"]["dataset_version"] for e in new_events] == [version]  # one event
    assert "training" in training_queued()  # the scheduler starts training from it

    # A rerun once all is done: no push, no event.
    states = run_dag("ingest", datetime(2026, 3, 4, 3, tzinfo=UTC))
    assert states["publish_dataset_version"] == "skipped"
    assert len(dataset_events()) == events_before + 1
    assert len(received.read_text().splitlines()) == 1
