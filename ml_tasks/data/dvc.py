"""DVC and git as a dataset version needs them, and DVC's record of a version's files.

A dataset version is the DVC hash of ``data/images`` (recorded in ``data/images.dvc``); DVC lists
its files (path -> md5) in a ``.dir`` object of its local cache, which :class:`VersionFiles`
reads without asking DVC.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ml_tasks.core import events
from ml_tasks.core.settings import Settings, safe_yaml
from ml_tasks.core.step import StepError
from ml_tasks.data.files import read_regular_file

DVC_FILE = Path("data/images.dvc")


def run_dvc(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run DVC in the repository with this interpreter's DVC; raises StepError with its output."""
    command = [sys.executable, "-m", "dvc", *args]
    done = subprocess.run(command, cwd=settings.repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise StepError(f"dvc {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
    return done


def configure_remote(settings: Settings) -> None:
    """Point the DVC remotes at this machine's state: the local remote follows FLYWHEEL_HOME,
    an S3 remote follows AWS_ENDPOINT_URL. Written to ``.dvc/config.local`` (not committed)."""
    run_dvc(
        settings, "remote", "modify", "--local", "local", "url", str(settings.home / "dvc-remote")
    )
    if endpoint := os.environ.get("AWS_ENDPOINT_URL"):
        run_dvc(settings, "remote", "modify", "--local", "minio", "endpointurl", endpoint)


def tracked_version(settings: Settings, rev: str | None = None) -> str | None:
    """The dataset version recorded in ``data/images.dvc`` (in the work tree, or at git ``rev``)."""
    if rev is None:
        path = settings.repo / DVC_FILE
        if not path.exists():
            return None
        text = path.read_text()
    else:
        text = git(settings, "show", f"{rev}:{DVC_FILE.as_posix()}")
    outs = (safe_yaml(text) or {}).get("outs") or [{}]
    md5 = str(outs[0].get("md5", ""))
    return md5.removesuffix(".dir") or None


def git(settings: Settings, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=settings.repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise StepError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def workspace_matches(settings: Settings) -> bool:
    """True when ``data/images`` holds exactly what ``data/images.dvc`` records."""
    if not settings.data_dir.exists():
        return False
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", str(DVC_FILE)],
        cwd=settings.repo,
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and json.loads(done.stdout or "{}") == {}


def dvc_objects(settings: Settings) -> Path:
    """DVC's local cache of file contents, one object per md5 (``<md5[:2]>/<md5[2:]>``)."""
    return settings.repo / ".dvc" / "cache" / "files" / "md5"


def cached_manifest(settings: Settings, version: str) -> dict[str, str] | None:
    """Relative path -> DVC md5 of every file of ``version``, from DVC's local cache.

    DVC records a version's files in a ``.dir`` object; it is in the local cache once the
    version was added or pulled here. None when it is not (or unreadable): ask DVC instead.
    """
    if len(version) != 32 or not all(c in "0123456789abcdef" for c in version):
        return None  # not an md5: no object of DVC's cache can be named by it
    path = dvc_objects(settings) / version[:2] / f"{version[2:]}.dir"
    try:
        entries = json.loads(path.read_bytes())
        return {e["relpath"]: e["md5"] for e in entries}  # as DVC wrote it: strings
    except FileNotFoundError:
        return None  # not added or pulled here: the usual case in a pod
    except (OSError, ValueError, TypeError, KeyError) as exc:
        events.emit(
            "dvc_record_unreadable",
            level="warning",
            dataset_version=version,
            path=str(path),
            detail=f"{type(exc).__name__}: {exc}",
        )
        return None


class VersionNotLocal(Exception):
    """Some files of a dataset version are neither in DVC's local cache nor in the work tree."""

    def __init__(self, paths: list[str]) -> None:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        super().__init__(
            f"{len(paths)} file(s) of the version are not in DVC's local cache and differ "
            f"in (or are missing from) the work tree: {shown}"
        )
        self.paths = paths


@dataclass(frozen=True)
class VersionFiles:
    """A dataset version as DVC records it (path -> md5), and where its files' bytes may be.

    A file is read from DVC's local cache, or from the work tree, and only when its md5 is the
    recorded one: whatever the work tree holds now (a file added without ``dvc add``, one
    rewritten in place, another version), what is read is the version's.
    """

    manifest: dict[str, str]
    objects: Path
    work_tree: Path | None = None

    def read(self, rel: str) -> bytes | None:
        """The bytes of ``rel`` in this version; None when neither place holds them."""
        md5 = self.manifest[rel]
        # str paths, not Path: a cold prepare reads every file here, and pathlib's joins
        # cost as much as the read
        places = [f"{self.objects}/{md5[:2]}/{md5[2:]}"]
        if self.work_tree is not None:
            places.append(f"{self.work_tree}/{rel}")
        for path in places:
            try:  # a regular file only, and not a link out of the work tree
                data = read_regular_file(path, follow_symlinks=False)
            except OSError:  # not there, not a file: the version is not held here
                continue
            if hashlib.md5(data, usedforsecurity=False).hexdigest() == md5:
                return data
        return None

    def read_or_raise(self, rel: str) -> bytes:
        if (data := self.read(rel)) is None:
            raise VersionNotLocal([rel])
        return data


def local_version(settings: Settings, version: str) -> VersionFiles | None:
    """``version``'s files as this machine holds them, when DVC's record of it is here."""
    manifest = cached_manifest(settings, version)
    if manifest is None:
        return None
    return VersionFiles(manifest, dvc_objects(settings), settings.data_dir)
