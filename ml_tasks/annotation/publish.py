"""Publish a dataset version: commit its files to git once, push the branch, and tell a
version ingest made from others.

Every part is idempotent: committing is a no-op when HEAD already has the version's files, and
a push that finds the remote up to date sends nothing, so a rerun after a crash at any point
finishes the job once. The git token (``FLYWHEEL_GIT_TOKEN``) goes in a header, never a URL.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError

VERSION_FILES = ("data/images.dvc", "data/versions.jsonl", "data/.gitignore")
COMMIT_PREFIX = "dataset: version "  # how a version ingest made is told from others in git


def git(settings: Settings, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=settings.repo,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise StepError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def version_uncommitted(settings: Settings) -> bool:
    return bool(git(settings, "status", "--porcelain", "--", *VERSION_FILES).strip())


def commit_version(settings: Settings, version: str, note: str) -> str:
    """Commit the version files (once: a no-op when HEAD already has them); returns HEAD."""
    present = [f for f in VERSION_FILES if (settings.repo / f).exists()]
    git(settings, "add", "--", *present)
    staged = (
        subprocess.run(
            ["git", "diff", "--cached", "--quiet", "--", *present], cwd=settings.repo
        ).returncode
        != 0
    )
    if staged:
        identity = {
            "GIT_AUTHOR_NAME": "Flywheel",
            "GIT_AUTHOR_EMAIL": "flywheel@localhost",
            "GIT_COMMITTER_NAME": "Flywheel",
            "GIT_COMMITTER_EMAIL": "flywheel@localhost",
        }
        git(
            settings,
            "commit",
            "-m",
            f"{COMMIT_PREFIX}{version[:12]} ({note})",
            "--",
            *present,
            env={k: v for k, v in identity.items() if k not in os.environ},
        )
    return git(settings, "rev-parse", "HEAD").strip()


class RemoteRefusesPush(StepError):
    """The git remote is a repository that cannot take the push (a checked-out branch)."""


class PushFailed(StepError):
    """``git push`` failed: the version is committed here, and the next run pushes it."""


def local_remote_path(settings: Settings, remote: str) -> Path | None:
    """The folder of ``remote`` when it is a repository on this machine, else None."""
    url = git(settings, "remote", "get-url", remote).strip()
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif "://" in url or (":" in url.split("/", 1)[0] and not url.startswith("/")):
        return None  # http(s), ssh, or scp-like user@host:path
    path = Path(url) if Path(url).is_absolute() else settings.repo / url
    return path if path.exists() else None


def check_remote_accepts(settings: Settings, remote: str, branch: str) -> None:
    """Refuse, before sending anything, a push git would refuse after sending everything.

    A push to a non-bare repository whose checked-out branch is the one pushed is refused by
    git (``receive.denyCurrentBranch``) only after the objects were transferred, which leaves
    them loose in that repository at every retry. Say what is wrong instead.
    """
    path = local_remote_path(settings, remote)
    if path is None:
        return

    def remote_git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    if remote_git("rev-parse", "--is-bare-repository") != "false":
        return
    if remote_git("symbolic-ref", "--short", "HEAD") != branch:
        return
    if remote_git("config", "receive.denyCurrentBranch") in ("ignore", "warn", "updateInstead"):
        return
    raise RemoteRefusesPush(
        f"the git remote {remote!r} ({path}) is a non-bare repository with branch {branch!r} "
        "checked out, so git refuses to update it; push to a bare repository "
        "(git init --bare) or check out another branch there. The version is committed "
        "here and the next run pushes it."
    )


def push_commit(settings: Settings, remote: str) -> bool | None:
    """Push the branch where the repository has ``remote``; the token never enters a URL.

    None when there is no such remote; else whether the push sent anything (False: the remote
    already had the branch as it is here, e.g. a rerun after a successful push).
    """
    if remote not in git(settings, "remote").split():
        return None
    branch = git(settings, "symbolic-ref", "--short", "HEAD").strip()
    check_remote_accepts(settings, remote, branch)
    args = ["push", "--porcelain", remote, f"HEAD:refs/heads/{branch}"]
    if token := os.environ.get("FLYWHEEL_GIT_TOKEN"):
        user = os.environ.get("FLYWHEEL_GIT_USER", "flywheel")
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        args = ["-c", f"http.extraHeader=Authorization: Basic {basic}", *args]
    done = subprocess.run(["git", *args], cwd=settings.repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise PushFailed(
            f"git push to {remote!r} failed: {(done.stderr or done.stdout).strip()}; the "
            "version is committed here and the next run pushes it"
        )
    out = done.stdout
    # --porcelain: one line per ref, "<flag>\t<from>:<to>\t<summary>"; "=" means up to date
    flags = [line[0] for line in out.splitlines() if "\t" in line and line[:1] in " +-*=!"]
    return any(flag != "=" for flag in flags)


def version_commit(settings: Settings) -> str | None:
    """The commit that recorded the current ``data/images.dvc``, when ingest made it."""
    out = git(settings, "log", "-1", "--format=%H%x00%s", "--", VERSION_FILES[0]).strip()
    if not out:
        return None
    commit, _, subject = out.partition("\x00")
    return commit if subject.startswith(COMMIT_PREFIX) else None
