"""The benchmarks never change the checkout they run from: a fingerprint, and a copy to use.

``make bench`` fingerprints every file of the checkout (tracked or ignored, ``.dvc/config.local``
included) before and after, and fails naming each file that changed. Left out: the
environments (``.venvs/``), the state folder (``.flywheel/``), the tools' caches (bytecode,
``.mypy_cache/``, ``.ruff_cache/``, ``.pytest_cache/``: a lint running beside the benchmarks
rewrites them) and ``.git/`` (whose index git refreshes on a read); the checked-out branch and
commit are compared instead, so a commit is caught (other refs are left out: in a repository
with several work trees, another one's commits move them). A benchmark that needs the
repository's dataset (DVC, git) works on :func:`repository_copy`, never on the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {
    ".venvs",
    ".flywheel",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}
# What a fresh clone has that the dataset steps read: params, DVC's set-up, the version files.
DATASET_FILES = [
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


def fingerprint(root: Path = REPO) -> dict[str, str]:
    """Relative path -> content hash of every file under ``root`` (see the module docstring)."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        rel_folder = Path(folder).relative_to(root)
        found[f"{rel_folder}/"] = "folder"
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                found[str(rel_folder / name)] = f"link:{os.readlink(path)}"
                continue
            digest = hashlib.sha256()
            try:
                with path.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            except FileNotFoundError:  # removed while we listed: it is not there, as recorded
                continue
            found[str(rel_folder / name)] = digest.hexdigest()
    branch = subprocess.run(
        ["git", "symbolic-ref", "-q", "HEAD"], cwd=root, capture_output=True, text=True
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    found["<git HEAD>"] = branch.stdout + head.stdout
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs, one line per path: ``added``, ``removed`` or ``changed``."""
    lines = [f"added   {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its standard output (a failure raises, with git's error)."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def repository_copy(dest: Path, *, who: str = "bench") -> Path:
    """A git repository with this checkout's dataset files, committed once (a fresh clone's).

    The benchmarks and the tests that run DVC and git work on such a copy (``FLYWHEEL_REPO``),
    never on the checkout, its DVC cache or its history; ``who`` names the committer.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in DATASET_FILES:
        if (REPO / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", f"{who}@flywheel.invalid")
    git(dest, "config", "user.name", f"Flywheel {who}")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "fresh clone")
    return dest
