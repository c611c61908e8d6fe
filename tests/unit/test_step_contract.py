"""The step contract every backend relies on: --help, exit codes, one JSON result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = ["prepare", "checks", "train", "validate", "dataset", "config", "chain"]


@pytest.mark.parametrize("step", STEPS)
def test_every_step_explains_itself(step: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"ml_tasks.{step}", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m ml_tasks.")


def test_usage_errors_exit_2_with_one_clear_line(flywheel_home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.train", "--epochs", "0", "--dataset-version", "x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("--epochs must be at least 1")


def test_refused_input_exits_3_and_writes_no_result(flywheel_home: Path, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_tasks.checks",
            "--dataset-version",
            "never-prepared",
            "--result-path",
            str(result),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    assert "error: dataset version never-prepared is not prepared" in done.stderr
    assert not result.exists()
    failed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert failed[-1]["action"] == "failed" and failed[-1]["component"] == "checks"


def test_a_step_writes_its_result_where_asked(flywheel_home: Path, tmp_path: Path) -> None:
    from ml_tasks.dataset import synthesize

    synthesize(tmp_path / "images", count=30, size=8)
    result = tmp_path / "out" / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_tasks.prepare",
            "--data-dir",
            str(tmp_path / "images"),
            "--dataset-version",
            "tiny",
            "--no-progress",
            "--result-path",
            str(result),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(result.read_text())
    assert written["prepared"] == 30 and written["status"] == "ok"
    assert json.loads(done.stdout.strip().splitlines()[-1]) == written
