"""A step's repository when the checkout is read-only (the steps image in a pod): a clone under
FLYWHEEL_HOME, or a deployment fault that exits 75, never "bad input" (3).

The tests run as root, for whom every folder is writable, so read-only is what
``is_writable`` answers, not file modes.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from ml_tasks.core import workspace
from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import InfrastructureError, run_step
from tests.repo_copy import make_repo_copy


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workspace, "is_writable", lambda repo: False)
    for name in ("FLYWHEEL_GIT_URL", "FLYWHEEL_GIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_a_writable_checkout_is_used_as_it_is(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(), repo=make_repo_copy(tmp_path / "repo"))
    assert workspace.writable_repo(settings) == settings


def test_a_read_only_checkout_is_cloned_under_the_home(tmp_path: Path, read_only: None) -> None:
    settings = dataclasses.replace(
        load_settings(), repo=make_repo_copy(tmp_path / "repo"), home=tmp_path / "home"
    )
    moved = workspace.writable_repo(settings)
    assert moved.repo == tmp_path / "home" / "repo"
    assert (moved.repo / "data" / "images.dvc").read_text() == (
        settings.repo / "data" / "images.dvc"
    ).read_text()
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=moved.repo, text=True, check=True, capture_output=True
    ).stdout
    assert "fresh clone" in log  # the history came along: dataset versions are commits


def test_no_history_and_no_remote_is_a_deployment_fault_not_bad_input(
    tmp_path: Path, read_only: None
) -> None:
    bare = tmp_path / "workspace"
    bare.mkdir()
    settings = dataclasses.replace(load_settings(), repo=bare, home=tmp_path / "home")
    with pytest.raises(workspace.WorkspaceError, match="no git history"):
        workspace.writable_repo(settings)
    assert issubclass(workspace.WorkspaceError, InfrastructureError)
    code = run_step("prepare", lambda: workspace.writable_repo(settings) and {}, result_path=None)
    assert code == EXIT_INFRASTRUCTURE


def test_ingest_refuses_a_clone_whose_commits_would_be_lost(
    tmp_path: Path, read_only: None
) -> None:
    settings = dataclasses.replace(
        load_settings(), repo=make_repo_copy(tmp_path / "repo"), home=tmp_path / "home"
    )
    with pytest.raises(workspace.WorkspaceError, match="FLYWHEEL_GIT_URL"):
        workspace.writable_repo(settings, needs_remote=True)
