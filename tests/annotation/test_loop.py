"""The annotation loop on real servers: images in -> Label Studio tasks -> people -> dataset.

Acceptance (issue 5): X images in ``incoming/`` -> the intake DAG -> exactly X tasks whose
predictions' scores order them -> a person (this test, through Label Studio's API) corrects
some labels and marks one image unusable -> the ingest DAG -> the dataset grew by exactly the
validated images with the person's labels, the DVC remote holds them, git has the version's
commit, the dataset Asset event exists, and claimed = tasks = ingested + quarantined. The
reruns after a crash are in ``test_loop_reruns``.
"""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from annotation_support import REPO, Loop
from loop_support import INTAKE_CONF, choice, dataset_events, dataset_files, git_log, run_dag

pytestmark = pytest.mark.slow


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
