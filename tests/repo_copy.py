"""A throwaway copy of the repository's tracked dataset files, as a fresh clone would have them.

Tests that run DVC and git point ``FLYWHEEL_REPO`` at such a copy, so they never touch the
developer's checkout, its DVC cache or its git history.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACKED = [
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/images.dvc",
    "data/versions.jsonl",
    "data/.gitignore",
    ".gitignore",
]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def make_repo_copy(dest: Path) -> Path:
    """A git repository with Flywheel's DVC set-up and dataset pointer, committed once."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in TRACKED:
        source = REPO / rel
        if source.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "tests@flywheel.invalid")
    git(dest, "config", "user.name", "Flywheel tests")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "fresh clone")
    return dest
