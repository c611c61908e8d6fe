"""Backfills train on the data of their date: the resolve step against an index holding two
dataset versions, and the DAG passing a backfill run's logical date to it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

OLD, NEW = "1" * 32, "2" * 32


@pytest.fixture()
def two_versions(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "params.yaml").write_text("prepare: {}\n")
    (repo / "data" / "versions.jsonl").write_text(
        json.dumps({"version": NEW, "created_at": "2026-02-10T08:00:00+00:00", "images": 1900})
        + "\n"
        + json.dumps({"version": OLD, "created_at": "2026-01-10T08:00:00+00:00", "images": 1797})
        + "\n"
    )
    (repo / "data" / "images.dvc").write_text(f"outs:\n- md5: {NEW}.dir\n  path: images\n")
    return repo


def resolve(repo: Path, *args: str) -> tuple[int, dict[str, object] | None, str]:
    result = repo / "result.json"
    result.unlink(missing_ok=True)
    done = subprocess.run(
        [
            os.environ["FLYWHEEL_STEPS_PYTHON"],
            "-m",
            "ml_tasks.resolve_dataset",
            *args,
            "--result-path",
            str(result),
        ],
        env={**os.environ, "FLYWHEEL_REPO": str(repo), "FLYWHEEL_HOME": str(repo / ".flywheel")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(result.read_text()) if result.exists() else None, done.stderr


def test_two_backfill_dates_resolve_to_the_versions_current_then(two_versions: Path) -> None:
    code, january, _ = resolve(two_versions, "--as-of", "2026-01-20T02:00:00+00:00")
    assert code == 0 and january is not None
    assert (january["dataset_version"], january["source"]) == (OLD, "as-of")
    code, february, _ = resolve(two_versions, "--as-of", "2026-02-15T02:00:00+00:00")
    assert code == 0 and february is not None and february["dataset_version"] == NEW
    # The boundary: a version counts from the moment it was created.
    _, exact, _ = resolve(two_versions, "--as-of", "2026-02-10T08:00:00+00:00")
    assert exact is not None and exact["dataset_version"] == NEW


def test_other_runs_use_the_current_version(two_versions: Path) -> None:
    code, current, _ = resolve(two_versions)
    assert code == 0 and current is not None
    assert (current["dataset_version"], current["source"]) == (NEW, "current")


def test_a_date_before_any_version_is_bad_input(two_versions: Path) -> None:
    code, result, stderr = resolve(two_versions, "--as-of", "2025-12-01T00:00:00+00:00")
    assert code == 3 and result is None  # StepError: the orchestrator does not retry
    assert "no dataset version existed" in stderr
