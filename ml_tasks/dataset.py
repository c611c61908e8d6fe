"""The versioned image dataset: ``data/images/<class>/<content hash>.png``, tracked by DVC.

A dataset version is the DVC hash of ``data/images`` (from ``data/images.dvc``); the git commit
that records that file is its revision, and ``data/versions.jsonl`` lists every version with its
creation time so that a backfill for date D can train on the data as of D.

Commands (``python -m ml_tasks.dataset --help``):

- ``materialize``: make ``data/images`` match ``data/images.dvc``: pull it from the DVC remote,
  or, on a fresh clone with an empty remote, write scikit-learn's bundled digits (1,797 real
  8x8 images; deterministic, so the hash matches the committed one) and push them.
- ``synth``: write synthetic labelled images of any count and size, for scale tests.
- ``versions`` / ``as-of DATE``: the index of versions, and the version current at a date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml_tasks import events
from ml_tasks.config import Settings, load_settings, safe_yaml
from ml_tasks.exit_codes import EXIT_STEP_ERROR
from ml_tasks.images import content_hash, encode_png
from ml_tasks.step import StepError

DVC_FILE = Path("data/images.dvc")
INDEX_FILE = Path("data/versions.jsonl")


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    created_at: datetime
    images: int
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "images": self.images,
            "note": self.note,
        }


# --- writing images -------------------------------------------------------------------------


def image_name(data: bytes, suffix: str = ".png") -> str:
    """The content-addressed file name of an image: the same bytes always get the same name."""
    return content_hash(data)[:16] + suffix


def write_image(folder: Path, label: str, data: bytes) -> Path:
    """Store one encoded image under its class folder; a no-op when it is already there."""
    target = folder / label / image_name(data)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def write_digits(folder: Path) -> int:
    """Write scikit-learn's bundled handwritten digits as PNGs by class; returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    names = set()
    for image, label in zip(pixels, digits.target, strict=True):
        names.add(write_image(folder, str(int(label)), encode_png(image)))
    return len(names)


def synthesize(folder: Path, *, count: int, size: int = 8, classes: int = 10, seed: int = 0) -> int:
    """Write ``count`` distinct synthetic images: class k is a bright bar at a k-dependent place.

    Learnable but not trivial (noise, jitter), so training and serving benchmarks exercise a
    real model; unique by construction (a per-image noise pattern), so counts are exact.
    """
    rng = np.random.default_rng(seed)
    written = 0
    for i in range(count):
        label = i % classes
        image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
        row = (label * size) // classes
        shift = int(rng.integers(-1, 2)) if size > 4 else 0
        row = min(max(row + shift, 0), size - 1)
        if label % 2:
            image[:, row] = rng.integers(180, 256, size=size, dtype=np.uint8)
        else:
            image[row, :] = rng.integers(180, 256, size=size, dtype=np.uint8)
        image[0, 0] = i % 251  # a per-image mark keeps every file distinct
        image[0, 1] = (i // 251) % 251
        write_image(folder, str(label), encode_png(image))
        written += 1
    return written


# --- DVC ------------------------------------------------------------------------------------


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
    import os

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


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.glob("*/*") if p.is_file()) if folder.exists() else 0


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


class NotARegularFile(OSError):
    """A path that is not a regular file (a FIFO, a socket, a device, a folder): not read."""


FILE_KINDS = {
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "folder",
    stat.S_IFLNK: "symbolic link",
}


def file_kind(mode: int) -> str:
    """What a ``stat`` mode says a path is, in words."""
    return FILE_KINDS.get(
        stat.S_IFMT(mode), "regular file" if stat.S_ISREG(mode) else "special file"
    )


def read_regular_file(path: str, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of ``path``, only if it is a regular file; raises :class:`NotARegularFile`.

    Opened without blocking (a FIFO would wait for a writer forever, a device may too) and
    checked on the open file, so what is read is what was checked. Without
    ``follow_symlinks``, a symbolic link is refused.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is a {file_kind(mode)}, not a regular file")
        with open(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


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


def add_version(settings: Settings, note: str, *, when: datetime | None = None) -> DatasetVersion:
    """Record ``data/images`` as a dataset version: ``dvc add``, push, and index it."""
    run_dvc(settings, "add", "--quiet", "data/images")
    version = tracked_version(settings)
    if version is None:
        raise StepError("dvc add wrote no hash to data/images.dvc")
    configure_remote(settings)
    run_dvc(settings, "push", "--quiet", "-r", settings.dvc_remote, str(DVC_FILE))
    entry = DatasetVersion(
        version, when or datetime.now(UTC), count_images(settings.data_dir), note
    )
    if all(v.version != version for v in read_index(settings)):
        with (settings.repo / INDEX_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry.to_json()) + "\n")
    events.emit("dataset_version_recorded", dataset_version=version, images=entry.images, note=note)
    return entry


def materialize(settings: Settings) -> dict[str, Any]:
    """Make ``data/images`` match ``data/images.dvc``, by pulling or by writing the digits."""
    recorded = tracked_version(settings)
    if recorded and workspace_matches(settings):
        return {
            "dataset_version": recorded,
            "source": "workspace",
            "images": count_images(settings.data_dir),
        }
    if recorded:
        configure_remote(settings)
        pulled = subprocess.run(
            [
                sys.executable,
                "-m",
                "dvc",
                "pull",
                "--quiet",
                "-r",
                settings.dvc_remote,
                str(DVC_FILE),
            ],
            cwd=settings.repo,
            capture_output=True,
            text=True,
        )
        if pulled.returncode == 0 and workspace_matches(settings):
            events.emit("dataset_pulled", dataset_version=recorded, remote=settings.dvc_remote)
            return {
                "dataset_version": recorded,
                "source": "dvc pull",
                "images": count_images(settings.data_dir),
            }
        events.emit(
            "dataset_pull_missed",
            level="warning",
            dataset_version=recorded,
            remote=settings.dvc_remote,
            detail=(pulled.stderr or pulled.stdout).strip()[-500:],
        )
    written = write_digits(settings.data_dir)
    entry = add_version(settings, "scikit-learn digits")
    if recorded and entry.version != recorded:
        events.emit(
            "dataset_differs_from_git",
            level="warning",
            recorded=recorded,
            dataset_version=entry.version,
            detail="the written digits differ from the committed data/images.dvc (another Pillow?)",
        )
    return {"dataset_version": entry.version, "source": "scikit-learn digits", "images": written}


# --- the index of versions -------------------------------------------------------------------


def read_index(settings: Settings) -> list[DatasetVersion]:
    path = settings.repo / INDEX_FILE
    if not path.exists():
        return []
    versions = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            versions.append(
                DatasetVersion(
                    row["version"],
                    datetime.fromisoformat(row["created_at"]),
                    int(row["images"]),
                    row.get("note", ""),
                )
            )
    return sorted(versions, key=lambda v: v.created_at)


def version_as_of(settings: Settings, when: datetime) -> DatasetVersion:
    """The newest dataset version created at or before ``when`` (for backfills)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    candidates = [v for v in read_index(settings) if v.created_at <= when]
    if not candidates:
        raise StepError(f"no dataset version existed at {when.isoformat()} (see {INDEX_FILE})")
    return candidates[-1]


def revision_of(settings: Settings, version: str) -> str:
    """The git commit whose ``data/images.dvc`` records ``version``."""
    for rev in git(settings, "log", "--format=%H", "--", DVC_FILE.as_posix()).split():
        if tracked_version(settings, rev) == version:
            return rev
    raise StepError(f"dataset version {version} is not recorded in any git commit of {DVC_FILE}")


def checkout_version(settings: Settings, version: str, dest: Path) -> Path:
    """A folder holding dataset ``version``: the work tree when it matches, else fetched via DVC.

    Fetching reads the version at its git revision through DVC's file system, from the DVC
    remote (what a pod does: it has the code and the remote, not the files).
    """
    if tracked_version(settings) == version and workspace_matches(settings):
        return settings.data_dir
    return fetch_version(settings, version, dest)


def fetch_version(settings: Settings, version: str, dest: Path) -> Path:
    """``dest/<version>``: the version's files read through DVC at its git revision (once)."""
    target = dest / version
    if (target / ".complete").exists():
        return target
    from dvc.api import DVCFileSystem

    configure_remote(settings)
    rev = revision_of(settings, version)
    fs = DVCFileSystem(str(settings.repo), rev=rev, remote=settings.dvc_remote)
    partial = dest / f".{version}.partial"
    fs.get("data/images", str(partial), recursive=True)
    partial.rename(target)
    (target / ".complete").touch()
    events.emit("dataset_fetched", dataset_version=version, revision=rev)
    return target


# --- CLI ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.dataset", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "materialize", help="pull data/images from DVC, or write the digits on a fresh clone"
    )
    synth = sub.add_parser(
        "synth", help="write synthetic labelled images (scale tests, benchmarks)"
    )
    synth.add_argument(
        "--out", type=Path, required=True, help="folder to write <class>/<hash>.png into"
    )
    synth.add_argument("--count", type=int, required=True, help="how many images")
    synth.add_argument("--size", type=int, default=8, help="width and height in pixels (default 8)")
    synth.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    synth.add_argument("--seed", type=int, default=0)
    sub.add_parser("versions", help="list dataset versions, oldest first")
    as_of = sub.add_parser("as-of", help="the dataset version current at a date (ISO 8601)")
    as_of.add_argument("when", type=datetime.fromisoformat)
    args = parser.parse_args(argv)

    settings = load_settings()
    events.configure("dataset")
    try:
        if args.command == "materialize":
            out: Any = materialize(settings)
        elif args.command == "synth":
            if args.count < 0 or args.size < 4 or args.classes < 2:
                parser.error("--count must be >= 0, --size >= 4 and --classes >= 2")
            out = {
                "written": synthesize(
                    args.out, count=args.count, size=args.size, classes=args.classes, seed=args.seed
                )
            }
        elif args.command == "versions":
            out = [v.to_json() for v in read_index(settings)]
        else:
            out = version_as_of(settings, args.when).to_json()
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STEP_ERROR
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
