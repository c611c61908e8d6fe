"""A fresh copy of the repository and an empty state folder for the kubeflow tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.repo_copy import make_repo_copy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clone_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a fresh clone: its own repository copy, state folder and HOME."""
    root = tmp_path_factory.mktemp("kfp")
    repo = make_repo_copy(root / "repo")
    yield {
        "FLYWHEEL_REPO": str(repo),
        "FLYWHEEL_HOME": str(root / "home"),
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(root),
        "PYTHONPATH": str(REPO),
    }


def run_module(
    env: dict[str, str], *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
