"""A throwaway copy of the repository's tracked dataset files, as a fresh clone would have them.

Tests that run DVC and git point ``FLYWHEEL_REPO`` at such a copy, so they never touch the
developer's checkout, its DVC cache or its git history. The copy is the benchmarks' own
(:func:`bench.checkout.repository_copy`): one list of the files a fresh clone's dataset needs.
"""

from __future__ import annotations

from pathlib import Path

from bench.checkout import git, repository_copy

__all__ = ["git", "make_repo_copy"]


def make_repo_copy(dest: Path) -> Path:
    """A git repository with Flywheel's DVC set-up and dataset pointer, committed once."""
    return repository_copy(dest, who="tests")
