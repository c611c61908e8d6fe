"""The local S3 endpoint's data folder: one file per object (a JSON header line, then the bytes),
each written so that a crash leaves either the old file or the new one, never half of either."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


class LocalS3Error(RuntimeError):
    """The data folder cannot be read back: a file in it is not one this server wrote."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` so that it holds either its old content or ``data``, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ObjectFolder:
    """The data folder: ``<bucket>/.bucket`` marks a bucket; ``<bucket>/<aa>/<sha256>`` an object.

    Keys are hashed into file names because S3 keys are not paths: ``a`` and ``a/b`` can both
    be objects, and a key may hold any character.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def bucket_dir(self, bucket: str) -> Path:
        return self.root / urllib.parse.quote(bucket, safe="")

    def object_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.bucket_dir(bucket) / digest[:2] / digest

    def save_bucket(self, bucket: str) -> None:
        write_durably(self.bucket_dir(bucket) / ".bucket", json.dumps({"name": bucket}).encode())

    def drop_bucket(self, bucket: str) -> None:
        folder = self.bucket_dir(bucket)
        if not folder.exists():
            return
        for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        folder.rmdir()
        fsync_dir(self.root)

    def save_object(self, bucket: str, key: str, headers: dict[str, str], body: bytes) -> None:
        header = json.dumps({"key": key, "headers": headers}).encode()
        write_durably(self.object_path(bucket, key), header + b"\n" + body)

    def drop_object(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def buckets(self) -> Iterator[tuple[str, Iterator[tuple[str, dict[str, str], bytes]]]]:
        """Every bucket with its objects (key, headers, bytes); removes unfinished writes."""
        if not self.root.exists():
            return
        for marker in sorted(self.root.glob("*/.bucket")):
            yield json.loads(marker.read_text())["name"], self._objects(marker.parent)

    def _objects(self, folder: Path) -> Iterator[tuple[str, dict[str, str], bytes]]:
        for path in sorted(folder.glob("*/*")):
            if path.name.startswith("."):
                path.unlink()  # a write that was never renamed into place: never acknowledged
                continue
            raw = path.read_bytes()
            header, sep, body = raw.partition(b"\n")
            try:
                meta = json.loads(header)
                key, headers = str(meta["key"]), dict(meta["headers"])
            except (ValueError, KeyError, TypeError) as exc:
                raise LocalS3Error(f"{path} is not an object this server wrote: {exc}") from exc
            if not sep:
                raise LocalS3Error(f"{path} is not an object this server wrote: no header line")
            yield key, headers, body
