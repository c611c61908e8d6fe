"""Ingest: validated annotations become a new dataset version (DVC + git).

Reads what Label Studio's export storage wrote to ``labeled/`` in the lake (one JSON object per
annotation, rewritten when the annotation is edited). The lake rather than Label Studio's API:
it is the record the loop keeps anyway, the step needs no Label Studio credentials, and it
works while Label Studio is down or being upgraded.

For each task, its newest submitted annotation decides (a skipped task waits):

- ``quality: unusable`` -> the image goes to ``quarantine/annotation/`` with the reason, and
  leaves the dataset if an earlier annotation had put it there;
- else the human's ``label`` (a correction wins over the model's guess) -> the image is stored
  as ``data/images/<label>/<content name>`` and removed from any other class folder, so an
  annotation edited after ingest moves the image on the next ingest, never duplicates it.

Then, if the dataset changed, or a previous run crashed after ``dvc push`` but before the git
commit: ``dvc add``, ``dvc push``, index (``ml_tasks.data.versions.add_version``), and one git
commit of ``data/images.dvc`` + ``data/versions.jsonl``. Every run then pushes the branch when the
repository has the remote, so a version committed by a run whose push failed is pushed by the
next one. The result says whether the current version is one ingest made (``announce``): the
DAG announces such a version (the dataset Asset) unless an Asset event already carries it, so a
version that was committed but never announced is announced by the next run, and once only.
Every part is idempotent, so a rerun after a crash at any point finishes the job once.

``python -m ml_tasks.annotation.ingest [--git-remote origin]``.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_tasks.annotation.batches import LABELED, QUARANTINE, write_json
from ml_tasks.annotation.storage import parallel
from ml_tasks.annotation.tasks import LABEL, QUALITY, REASON, UNUSABLE
from ml_tasks.core import events
from ml_tasks.core.lake import Lake, LakeError, open_lake
from ml_tasks.core.settings import Settings, load_params, load_settings
from ml_tasks.core.step import StepError, add_result_option, run_step
from ml_tasks.core.workspace import writable_repo

VERSION_FILES = ("data/images.dvc", "data/versions.jsonl", "data/.gitignore")
COMMIT_PREFIX = "dataset: version "  # how a version ingest made is told from others in git


@dataclass(frozen=True)
class Decision:
    """What the newest annotation of one task says about its image."""

    task_id: int
    annotation_id: int
    key: str  # the image in the lake
    name: str  # its content name, <sha16>.png
    content_hash: str | None
    label: str | None  # None when unusable
    reason: str | None
    model_label: str | None


def read_annotations(lake: Lake) -> list[dict[str, Any]]:
    keys = [k for k in lake.list(LABELED) if not k.endswith("/")]
    return [json.loads(raw) for raw in parallel(lake.read_bytes, keys)]


def choices(result: list[dict[str, Any]], from_name: str) -> list[str]:
    for region in result:
        if region.get("from_name") == from_name:
            return [str(c) for c in region.get("value", {}).get("choices", [])]
    return []


def text(result: list[dict[str, Any]], from_name: str) -> str | None:
    for region in result:
        if region.get("from_name") == from_name:
            lines = region.get("value", {}).get("text", [])
            return " ".join(str(t) for t in lines).strip() or None
    return None


def decide(annotations: list[dict[str, Any]], classes: list[str]) -> tuple[list[Decision], int]:
    """The newest submitted annotation per task, as decisions; also counts the incomplete ones."""
    newest: dict[int, dict[str, Any]] = {}
    for ann in annotations:
        if ann.get("was_cancelled") or not ann.get("task"):
            continue
        task_id = int(ann["task"]["id"])
        order = (str(ann.get("updated_at") or ""), int(ann["id"]))
        if task_id not in newest or order > newest[task_id]["_order"]:
            newest[task_id] = {**ann, "_order": order}
    decisions, incomplete = [], 0
    for task_id, ann in sorted(newest.items()):
        data = ann["task"].get("data", {})
        key = data.get("key")
        result = ann.get("result") or []
        labels = choices(result, LABEL)
        label = labels[0] if labels else None
        unusable = UNUSABLE in choices(result, QUALITY)
        if not key or (not unusable and label not in classes):
            incomplete += 1
            continue
        reason = None
        if unusable:
            who = (ann.get("completed_by") or {}).get("email") or "an annotator"
            reason = text(result, REASON) or f"marked unusable by {who}"
        decisions.append(
            Decision(
                task_id=task_id,
                annotation_id=int(ann["id"]),
                key=key,
                name=key.rsplit("/", 1)[-1],
                content_hash=data.get("content_hash"),
                label=None if unusable else label,
                reason=reason,
                model_label=data.get("model_label"),
            )
        )
    return decisions, incomplete


def apply_decisions(
    settings: Settings, lake: Lake, decisions: list[Decision], classes: list[str]
) -> dict[str, Any]:
    """Make ``data/images`` and ``quarantine/`` agree with the decisions; counts the changes."""
    from ml_tasks.data.images import content_hash

    data_dir = settings.data_dir
    counts: dict[str, Any] = {
        "added": 0,
        "moved": 0,
        "removed": 0,
        "labeled": 0,
        "quarantined": 0,
        "corrected": 0,
    }

    def fetch(decision: Decision) -> bytes | None:
        if decision.label and (data_dir / decision.label / decision.name).exists():
            return None  # already in place: no need to read it again
        if decision.label is None and lake.exists(QUARANTINE + decision.name):
            return None
        try:
            raw = lake.read_bytes(decision.key)
        except LakeError as exc:
            raise StepError(f"annotated image {decision.key} is missing from the lake") from exc
        if decision.content_hash and content_hash(raw) != decision.content_hash:
            raise StepError(f"{decision.key} does not match its content hash")
        return raw

    fetched = parallel(fetch, decisions)
    for decision, raw in zip(decisions, fetched, strict=True):
        elsewhere = [data_dir / c / decision.name for c in classes if c != decision.label]
        stale = [p for p in elsewhere if p.exists()]
        if decision.label is None:
            counts["quarantined"] += 1
            if raw is not None:
                lake.write_bytes(QUARANTINE + decision.name, raw)
                write_json(
                    lake,
                    QUARANTINE + decision.name.rsplit(".", 1)[0] + ".reason.json",
                    {
                        "reason": decision.reason,
                        "source": decision.key,
                        "task_id": decision.task_id,
                        "annotation_id": decision.annotation_id,
                    },
                )
        else:
            counts["labeled"] += 1
            counts["corrected"] += int(decision.model_label not in (None, decision.label))
            target = data_dir / decision.label / decision.name
            if raw is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(raw)
                tmp.replace(target)
                counts["moved" if stale else "added"] += 1
        for path in stale:
            path.unlink()
            counts["removed"] += int(decision.label is None)
    return counts


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


@contextmanager
def ingest_lock(settings: Settings) -> Iterator[None]:
    """One ingest at a time per checkout: two would race on the work tree and git index."""
    lock_dir = settings.repo / ".git" if (settings.repo / ".git").is_dir() else settings.home
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / "flywheel-ingest.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ingest(settings: Settings, git_remote: str) -> dict[str, Any]:
    from ml_tasks.data.dvc import tracked_version, workspace_matches
    from ml_tasks.data.versions import add_version

    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in load_params(settings.params_path)["prepare"]["classes"]]
    with ingest_lock(settings):
        annotations = read_annotations(lake)
        decisions, incomplete = decide(annotations, classes)
        counts = apply_decisions(settings, lake, decisions, classes)
        events.emit(
            "annotations_ingested",
            annotations=len(annotations),
            tasks=len(decisions),
            incomplete=incomplete,
            **counts,
        )
        changed = not workspace_matches(settings) or version_uncommitted(settings)
        version, entry = tracked_version(settings), None
        note = f"{counts['labeled']} annotated, {counts['quarantined']} quarantined"
        if changed:
            entry = add_version(settings, note)
            version = entry.version
            commit_version(settings, version, note)
        made_by_ingest = version_commit(settings)
        if entry is not None:
            events.emit(
                "dataset_version_created",
                dataset_version=version,
                commit=made_by_ingest,
                images=entry.images,
                **counts,
            )
        # After the commit, in every run: a version whose push failed last time goes out now.
        pushed = push_commit(settings, git_remote)
        if pushed:
            events.emit(
                "dataset_version_pushed",
                dataset_version=version,
                commit=made_by_ingest,
                remote=git_remote,
                finished_earlier_version=not changed,
            )
    return {
        "dataset_version": version,
        "new_version": changed,
        # The DAG announces a version ingest made unless an Asset event already carries it:
        # a version committed by a run that failed before announcing it is announced now.
        "announce": made_by_ingest is not None,
        "commit": made_by_ingest,
        "pushed": pushed,
        "annotations": len(annotations),
        "tasks": len(decisions),
        "incomplete": incomplete,
        **counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.annotation.ingest",
        description="Add validated annotations (labeled/ in the lake) to a new dataset version.",
    )
    parser.add_argument(
        "--git-remote",
        default="origin",
        help="push the version commit to this remote when it exists",
    )
    add_result_option(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    return run_step(
        "ingest",
        # A pod's /workspace is read-only: commit in a clone that pushes to FLYWHEEL_GIT_URL.
        lambda: ingest(writable_repo(settings, needs_remote=True), args.git_remote),
        result_path=args.result_path,
    )


if __name__ == "__main__":
    raise SystemExit(main())
