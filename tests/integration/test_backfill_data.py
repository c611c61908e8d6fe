"""Backfills train on the data of their date: two real dataset versions in git and DVC, and the
step commands a backfill run executes for two past dates (the DAG hands them ``--as-of``,
see tests/dags/test_backfill.py)."""

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.datasets import add_synthetic_version, materialize
from tests.repo_copy import git, make_repo_copy

pytestmark = pytest.mark.slow


def step(env: dict[str, str], tmp: Path, name: str, *args: str) -> dict:
    result = tmp / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", f"ml_tasks.{name}", *args, "--result-path", str(result)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def test_two_backfill_dates_train_on_the_two_versions_current_then(tmp_path: Path) -> None:
    repo = make_repo_copy(tmp_path / "repo")
    env = {
        "FLYWHEEL_REPO": str(repo),
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    materialize(env)
    first = json.loads((repo / "data/versions.jsonl").read_text().splitlines()[0])
    created_first = datetime.fromisoformat(first["created_at"])

    # a second version, created a day later: 20 more images, recorded and committed as
    # the ingest DAG does
    created_second = created_first + timedelta(days=1)
    add_synthetic_version(env, count=20, seed=9, when=created_second)
    git(repo, "add", "data/images.dvc", "data/versions.jsonl")
    git(repo, "commit", "-q", "-m", "dataset: twenty more")
    versions = [
        json.loads(line)["version"]
        for line in (repo / "data/versions.jsonl").read_text().splitlines()
    ]
    assert len(versions) == 2

    # a pod has the code and the DVC remote, not the files
    shutil.rmtree(repo / "data" / "images")
    shutil.rmtree(repo / ".dvc" / "cache")
    trained = {}
    # two backfill dates: one between the versions, one after the second
    for when in (created_first + timedelta(hours=1), created_second + timedelta(hours=1)):
        as_of = when.astimezone(UTC).isoformat()
        tmp = tmp_path / as_of.replace(":", "-")
        tmp.mkdir()
        version = step(env, tmp, "resolve_dataset", "--as-of", as_of)["dataset_version"]
        prepared = step(env, tmp, "prepare", "--dataset-version", version, "--no-progress")
        run = step(
            env,
            tmp,
            "train",
            "--dataset-version",
            version,
            "--epochs",
            "1",
            "--logical-date",
            as_of,
            "--no-progress",
        )
        trained[as_of] = (version, prepared["prepared"], run["mlflow_run_id"])

    assert [v for v, _, _ in trained.values()] == versions
    assert [n for _, n, _ in trained.values()] == [1797, 1817]

    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    for as_of, (version, _, run_id) in trained.items():
        tags = client.get_run(run_id).data.tags
        assert tags["flywheel.dataset_version"] == version
        assert tags["flywheel.logical_date"] == as_of
