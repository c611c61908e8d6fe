"""A repository a step may write to, wherever it runs.

DVC writes inside the repository (``.dvc/config.local``, ``.dvc/tmp``, its cache) and ingest
commits there; in a pod the steps image's ``/workspace`` is read-only and only ``/tmp`` (the
``FLYWHEEL_HOME`` emptyDir) is writable. So a step that drives git or DVC asks
:func:`writable_repo` for its repository: the checkout itself when it is writable (a laptop, the
local backend, the tests), else a clone of it under ``FLYWHEEL_HOME``. With
``FLYWHEEL_GIT_URL`` set the clone follows that remote's branch (``FLYWHEEL_GIT_BRANCH``,
default ``main``; ``FLYWHEEL_GIT_USER``/``FLYWHEEL_GIT_TOKEN`` from a Secret), so it knows the
dataset versions committed after the image was built, and ingest pushes there.

A repository that cannot be made writable is a deployment fault (a git server that did not
answer, a missing setting), not bad input: :class:`WorkspaceError` is an
:class:`~ml_tasks.core.step.InfrastructureError`, so the step exits 75 (retried) instead of 3 (which
tells the orchestrator never to retry), and its result and message say what to fix.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from ml_tasks.core.settings import Settings
from ml_tasks.core.step import InfrastructureError


class WorkspaceError(InfrastructureError):
    """No writable repository with git history could be set up (a deployment fault)."""


def is_writable(repo: Path) -> bool:
    """True when git and DVC can write where they need to in ``repo``."""
    dvc = repo / ".dvc"
    return os.access(repo, os.W_OK) and (not dvc.exists() or os.access(dvc, os.W_OK))


def _auth_args() -> list[str]:
    """``-c http.extraHeader=...`` for the git token: it never enters a URL or the config."""
    token = os.environ.get("FLYWHEEL_GIT_TOKEN")
    if not token:
        return []
    user = os.environ.get("FLYWHEEL_GIT_USER", "flywheel")
    basic = base64.b64encode(f"{user}:{token}".encode()).decode()
    return ["-c", f"http.extraHeader=Authorization: Basic {basic}"]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        shown = " ".join(a for a in args if not a.startswith("http.extraHeader"))
        raise WorkspaceError(f"git {shown} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout


def writable_repo(settings: Settings, *, needs_remote: bool = False) -> Settings:
    """``settings`` with a repository git and DVC can write to (see the module docstring).

    ``needs_remote``: the step publishes commits (ingest), so a clone must follow
    ``FLYWHEEL_GIT_URL``; a clone of the image alone would lose them with the pod.
    """
    source = settings.repo
    if is_writable(source):
        return settings
    url = os.environ.get("FLYWHEEL_GIT_URL")
    if needs_remote and not url:
        raise WorkspaceError(
            f"{source} is read-only (a pod's root file system) and FLYWHEEL_GIT_URL is not set: "
            "the commits this step makes would be lost with the pod; set FLYWHEEL_GIT_URL and "
            "the git credentials (FLYWHEEL_GIT_USER, FLYWHEEL_GIT_TOKEN)"
        )
    if not (source / ".git").exists() and not url:
        raise WorkspaceError(
            f"{source} is read-only and holds no git history to clone (dataset versions are git "
            "commits): build the steps image with `make images`, or set FLYWHEEL_GIT_URL"
        )
    clone = settings.home / "repo"
    if not (clone / ".git").is_dir():
        partial = settings.home / ".repo.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        origin = url if url and not (source / ".git").exists() else str(source)
        _git(settings.home, *_auth_args(), "clone", "--quiet", origin, str(partial))
        partial.rename(clone)
    if url:
        branch = os.environ.get("FLYWHEEL_GIT_BRANCH", "main")
        _git(clone, "remote", "set-url", "origin", url)
        _git(clone, *_auth_args(), "fetch", "--quiet", "origin", branch)
        _git(clone, "checkout", "--quiet", "-B", branch, f"origin/{branch}")
    return dataclasses.replace(settings, repo=clone)
