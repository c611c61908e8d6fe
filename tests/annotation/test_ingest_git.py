"""Ingest's git side on throwaway repositories: where its push may go (no servers)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ml_tasks.annotation.publish import RemoteRefusesPush, push_commit
from ml_tasks.core.settings import load_settings


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def objects(repo: Path) -> int:
    """Objects a repository holds, loose or packed."""
    counted = dict(
        line.split(": ", 1) for line in git(repo, "count-objects", "-v").strip().splitlines()
    )
    return int(counted["count"]) + int(counted["in-pack"])


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@flywheel.invalid")
    git(path, "config", "user.name", "t")
    (path / "params.yaml").write_text("{}\n")
    git(path, "add", "params.yaml")
    git(path, "commit", "-q", "-m", "first")
    monkeypatch.setenv("FLYWHEEL_REPO", str(path))
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    return path


def commit_something(repo: Path) -> None:
    (repo / "data.txt").write_text("a new version\n")
    git(repo, "add", "data.txt")
    git(repo, "commit", "-q", "-m", "dataset: version 0123456789ab (1 annotated)")


def test_a_non_bare_remote_with_the_branch_checked_out_is_refused_before_sending(
    repo: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo), str(remote))  # non-bare, main checked out
    git(repo, "remote", "add", "origin", str(remote))
    commit_something(repo)
    before = objects(remote)
    with pytest.raises(RemoteRefusesPush, match="non-bare repository with branch 'main'"):
        push_commit(load_settings(), "origin")
    assert objects(remote) == before  # nothing left behind there


def test_a_bare_remote_takes_the_push_once(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    commit_something(repo)
    settings = load_settings()
    assert push_commit(settings, "origin") is True
    assert git(remote, "rev-parse", "main") == git(repo, "rev-parse", "HEAD")
    assert push_commit(settings, "origin") is False  # already there: nothing sent
    assert push_commit(settings, "upstream") is None  # no such remote: nothing to do
