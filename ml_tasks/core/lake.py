"""The lake: one storage root addressed by keys, on local disk or S3 (MinIO).

``open_lake("file:///abs/path")`` or ``open_lake("s3://bucket/prefix")``. Keys use ``/``.
Writes are atomic (a local write goes to a temporary file that is renamed; an S3 PUT is
atomic), so a retried step never reads half an object. The S3 endpoint comes from boto3's own
settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...), which Airflow connections, pods'
Secrets and the tests set alike.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse


def s3_objects(client: Any, bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` in ``bucket`` (``Key``, ``Size``, ``ETag``...): each page of
    ``list_objects_v2`` in turn, so a listing longer than a page (1,000 keys) is complete."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


class LakeError(RuntimeError):
    """The lake cannot be reached or holds something unexpected."""


class Lake(Protocol):
    uri: str

    def url(self, key: str) -> str: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def writer(self, key: str) -> AbstractContextManager[BinaryIO]: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def copy(self, src: str, dst: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Sequence[str]) -> None: ...
    def size(self, key: str) -> int: ...
    def create_if_absent(self, key: str, data: bytes) -> bool: ...


@contextmanager
def locked_temporary(tmp: Path) -> Iterator[BinaryIO]:
    """``tmp`` opened empty for writing, with an exclusive lock held until the block ends.

    The lock (``flock``) goes with the process that holds it, so a file left by a killed
    writer is free to take over, while one still being written makes the next writer wait.
    A writer that waited checks that the file it locked is still at ``tmp`` (the one before
    may have moved it into place), else it opens ``tmp`` afresh.
    """
    while True:
        # O_CREAT without O_TRUNC: never empty a file before holding its lock
        fh = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666), "wb")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            still_there = os.path.samestat(os.fstat(fh.fileno()), os.stat(tmp))
        except FileNotFoundError:
            still_there = False
        except BaseException:
            fh.close()
            raise
        if still_there:
            break
        fh.close()
    with fh:
        fh.truncate(0)
        yield fh


class LocalLake:
    """A folder on this machine (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise LakeError(f"key {key!r} escapes the lake root")
        return path

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise LakeError(f"no object {key!r} in {self.uri}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as fh:
            fh.write(data)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A file to write ``key`` through (large arrays: no copy in memory first).

        The object appears, atomically, only when the block ends without an error.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One temporary name per key, locked while written: a writer killed midway leaves
        # it behind, and the next writer of the key reuses it; two writers take turns.
        tmp = path.with_name(f".{path.name}.tmp")
        with locked_temporary(tmp) as fh:
            try:
                yield fh
                fh.flush()
                tmp.replace(path)
            except BaseException:
                tmp.unlink(missing_ok=True)  # still this writer's: it holds the lock
                raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root.resolve()
        start = self._path(prefix) if prefix else base
        folder = start if start.is_dir() else start.parent
        if not folder.exists():
            return
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def copy(self, src: str, dst: str) -> None:
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(self._path(src), tmp)
        except FileNotFoundError as exc:
            raise LakeError(f"no object {src!r} in {self.uri}") from exc
        tmp.replace(target)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if absent; True when this call created it.

        The body goes to a temporary file first and is hard-linked into place: ``link`` fails
        when the name exists, like ``O_EXCL``, and a reader never sees an empty file.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True


class S3Lake:
    """A bucket (and optional prefix) on S3 or MinIO."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def object_key(self, key: str) -> str:
        """The bucket key of lake key ``key`` (under the lake's prefix)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def read_bytes(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        except self.client.exceptions.NoSuchKey as exc:
            raise LakeError(f"no object {key!r} in {self.uri}") from exc
        data: bytes = body.read()
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A buffer uploaded as ``key`` when the block ends without an error."""
        buffer = io.BytesIO()
        yield buffer
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=buffer.getvalue())

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.object_key(key)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def list(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        for obj in s3_objects(self.client, self.bucket, self.object_key(prefix)):
            yield obj["Key"][strip:]

    def copy(self, src: str, dst: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self.object_key(dst),
            CopySource={"Bucket": self.bucket, "Key": self.object_key(src)},
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys``, a thousand per request (the most one S3 call takes)."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            done = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.object_key(k)} for k in chunk], "Quiet": True},
            )
            if done.get("Errors"):
                raise LakeError(
                    f"could not delete {len(done['Errors'])} objects: {done['Errors'][:3]}"
                )

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if absent (``If-None-Match: *``); True when this
        call created it. S3 puts are atomic: readers see the whole body or no object."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, IfNoneMatch="*"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise LakeError(f"no object {key!r} in {self.uri}")
        return int(head["ContentLength"])


def open_lake(uri: str) -> Lake:
    """The lake at ``uri`` (``file://`` or ``s3://``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalLake(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise LakeError(f"lake URI {uri!r} names no bucket")
        return S3Lake(parsed.netloc, parsed.path)
    if not parsed.scheme:
        return LocalLake(Path(uri).resolve())
    raise LakeError(f"lake URI {uri!r}: only file:// and s3:// are supported")
