"""The annotation loop on real servers: images in -> Label Studio tasks -> people -> dataset.

Acceptance (issue 5): X images in ``incoming/`` -> the intake DAG -> exactly X tasks whose
predictions' scores order them -> a person (this test, through Label Studio's API) corrects
some labels and marks one image unusable -> the ingest DAG -> the dataset grew by exactly the
validated images with the person's labels, the DVC remote holds them, git has the version's
commit, the dataset Asset event exists, and claimed = tasks = ingested + quarantined. Plus
reruns after a crash between claim and task creation, and between ``dvc push`` and commit.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from annotation_support import REPO, Loop, run_helper

pytestmark = pytest.mark.slow


def load_dag(name: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{name}.py"))
    assert not bag.import_errors, bag.import_errors
    (dag,) = bag.dags.values()
    return dag


def run_dag(name: str, when: datetime, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Run a DAG with dag.test(); the state of each task and of the run (``dag_run``)."""
    dag = load_dag(name)
    # run_after pins the run id (manual__<when>): running the same date again is a rerun.
    run = dag.test(logical_date=when, run_after=when, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return {**states, "dag_run": str(run.state)}


def manual_run_id(when: datetime) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    return str(
        DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=when, run_after=when)
    )


def dataset_events() -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from flywheel_airflow.assets import DATASET_URI
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == DATASET_URI)
        ).all()
        return [{"extra": dict(r.extra or {}), "source_dag_id": r.source_dag_id} for r in rows]


def dataset_files(repo: Path) -> dict[str, str]:
    """Content name -> class folder, for every image in the work tree."""
    return {p.name: p.parent.name for p in (repo / "data" / "images").glob("*/*.png")}


def git_log(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def choice(from_name: str, value: str) -> dict[str, Any]:
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [value]},
    }


INTAKE_CONF = {"min_images": 12, "batch_size": 50, "poke_seconds": 1}


def test_images_become_a_dataset_version_with_the_humans_labels(loop: Loop) -> None:
    x = INTAKE_CONF["min_images"]
    loop.put_incoming(x - 3, seed=101)
    # The rest arrive while the sensor waits (deferred): it must fire at exactly X.
    late = threading.Timer(4.0, loop.put_incoming, kwargs={"count": 3, "seed": 102})
    late.start()
    states = run_dag("intake", datetime(2026, 3, 1, tzinfo=UTC), INTAKE_CONF)
    late.join()
    assert states == dict.fromkeys(states, "success"), states
    assert loop.keys("incoming/") == []  # everything claimed, sources deleted after copying

    tasks = loop.tasks()
    assert len(tasks) == x
    scores = [t.predictions[0].score for t in tasks]
    assert scores == sorted(scores), "tasks must come most uncertain first"
    for task in tasks:
        (prediction,) = task.predictions
        assert prediction.result[0]["from_name"] == "label"
        assert prediction.result[0]["to_name"] == "image"
        assert prediction.model_version == f"{'digits-annotation-tests'}@v{loop.champion}"
        assert loop.s3().head_object(Bucket=loop.bucket, Key=task.data["key"])

    # The person: corrects three labels, marks one unusable, accepts the rest.
    ls = loop.label_studio_client()
    expected: dict[str, str] = {}
    unusable_task = tasks[0]
    for i, task in enumerate(tasks):
        guess = task.predictions[0].result[0]["value"]["choices"][0]
        name = task.data["key"].rsplit("/", 1)[-1]
        if task.id == unusable_task.id:
            result = [
                choice("quality", "unusable"),
                {
                    "from_name": "reason",
                    "to_name": "image",
                    "type": "textarea",
                    "value": {"text": ["smudged scan"]},
                },
            ]
        else:
            label = str((int(guess) + 1) % 10) if i in (1, 2, 3) else guess
            expected[name] = label
            result = [choice("label", label)]
        ls.annotations.create(id=task.id, result=result, request_options={"max_retries": 0})

    before = dataset_files(loop.repo)
    commits_before = git_log(loop.repo)
    events_before = len(dataset_events())
    states = run_dag("ingest", datetime(2026, 3, 1, 1, tzinfo=UTC))
    assert states == dict.fromkeys(states, "success"), states

    after = dataset_files(loop.repo)
    added = {n: c for n, c in after.items() if n not in before}
    assert added == expected  # exactly the validated images, in the person's classes
    assert set(before) <= set(after)
    unusable_name = unusable_task.data["key"].rsplit("/", 1)[-1]
    reason = json.loads(
        loop.s3()
        .get_object(
            Bucket=loop.bucket,
            Key=f"quarantine/annotation/{unusable_name.removesuffix('.png')}.reason.json",
        )["Body"]
        .read()
    )
    assert reason["reason"] == "smudged scan"
    assert unusable_name not in after

    log = git_log(loop.repo)
    assert len(log) == len(commits_before) + 1 and log[0].startswith("dataset: version")
    assert git_log(loop.repo.parent / "origin.git") == log  # pushed to the remote
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "data"], cwd=loop.repo, capture_output=True, text=True
        ).stdout
        == ""
    )
    status = subprocess.run(
        [
            str(Path(REPO / ".venvs/steps/bin/python")),
            "-m",
            "dvc",
            "status",
            "-c",
            "-r",
            "minio",
            "--json",
            "data/images.dvc",
        ],
        cwd=loop.repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout or "{}") == {}, "the DVC remote lacks files of the version"
    new_events = dataset_events()[events_before:]
    assert len(new_events) == 1 and new_events[0]["source_dag_id"] == "flywheel_ingest"
    version = new_events[0]["extra"]["dataset_version"]
    index = [json.loads(ln) for ln in (loop.repo / "data/versions.jsonl").read_text().splitlines()]
    assert index[-1]["version"] == version and index[-1]["images"] == len(after)

    claimed = sum(
        len(json.loads(loop.s3().get_object(Bucket=loop.bucket, Key=k)["Body"].read())["images"])
        for k in loop.keys("annotation/")
        if k.endswith("manifest.json")
    )
    quarantined = [k for k in loop.keys("quarantine/") if k.endswith(".png")]
    assert claimed == len(tasks) == len(added) + len(quarantined) == x

    # An annotation edited after ingest moves its image on the next ingest; no duplicate.
    moved_task = tasks[5]
    moved_name = moved_task.data["key"].rsplit("/", 1)[-1]
    new_label = str((int(expected[moved_name]) + 5) % 10)
    (annotation,) = ls.annotations.list(id=moved_task.id)
    ls.annotations.update(id=annotation.id, result=[choice("label", new_label)])
    states = run_dag("ingest", datetime(2026, 3, 1, 2, tzinfo=UTC))
    assert states == dict.fromkeys(states, "success"), states
    final = dataset_files(loop.repo)
    assert final[moved_name] == new_label and len(final) == len(after)
    assert len(git_log(loop.repo)) == len(log) + 1

    # Nothing new: no version, no commit, no Asset event.
    events_now = len(dataset_events())
    states = run_dag("ingest", datetime(2026, 3, 1, 3, tzinfo=UTC))
    assert states["publish_dataset_version"] == "skipped"
    assert len(dataset_events()) == events_now
    assert len(git_log(loop.repo)) == len(log) + 1


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
    ls = loop.label_studio_client()
    for task in loop.tasks():
        guess = task.predictions[0].result[0]["value"]["choices"][0]
        ls.annotations.create(
            id=task.id, result=[choice("label", guess)], request_options={"max_retries": 0}
        )
    deadline = time.monotonic() + 30
    while len(loop.keys("labeled/")) < x and time.monotonic() < deadline:
        time.sleep(0.5)
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
    ls = loop.label_studio_client()
    for task in loop.tasks():
        guess = task.predictions[0].result[0]["value"]["choices"][0]
        ls.annotations.create(
            id=task.id, result=[choice("label", guess)], request_options={"max_retries": 0}
        )
    deadline = time.monotonic() + 30
    while len(loop.keys("labeled/")) < x and time.monotonic() < deadline:
        time.sleep(0.5)
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


def tracked_version(repo: Path) -> str:
    text = (repo / "data" / "images.dvc").read_text()
    (md5,) = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if "md5:" in ln]
    return md5.removesuffix(".dir")
