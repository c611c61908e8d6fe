"""A workspace the step commands run in: a fresh copy of the repository, its tracked dataset
version prepared in an empty state folder, and the environment to call the steps with."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.repo_copy import make_repo_copy

REPO = Path(__file__).resolve().parents[2]


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = make_repo_copy(root / "repo")
        self.home = root / "home"
        self.dataset_version = ""
        self.env = {
            "FLYWHEEL_REPO": str(self.repo),
            "FLYWHEEL_HOME": str(self.home),
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "HOME": str(root),
            "PYTHONPATH": str(REPO),
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``python -m ARGS`` in this workspace, with ``env`` on top of its environment."""
        return subprocess.run(
            [sys.executable, "-m", *args],
            env={**self.env, **env},
            cwd=self.root,
            capture_output=True,
            text=True,
        )

    def events(self) -> list[dict[str, Any]]:
        path = self.home / "logs" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """The digits prepared as the version ``data/images.dvc`` records (what a clone trains on)."""
    ws = Workspace(tmp_path_factory.mktemp("workspace"))
    with pytest.MonkeyPatch.context() as env:  # the prepare below reads these, nothing after
        env.setenv("FLYWHEEL_REPO", ws.env["FLYWHEEL_REPO"])
        env.setenv("FLYWHEEL_HOME", str(ws.home))
        from ml_tasks.core.settings import load_settings
        from ml_tasks.data.dvc import tracked_version
        from ml_tasks.data.synthetic import write_digits
        from ml_tasks.prepare import prepare

        settings = load_settings()
        ws.dataset_version = tracked_version(settings) or ""
        assert ws.dataset_version, "data/images.dvc records no version"
        write_digits(ws.root / "images")
        prepare(settings, data_dir=ws.root / "images", dataset_version=ws.dataset_version)
    yield ws
