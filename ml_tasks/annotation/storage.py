"""What claiming asks of the lake beyond reading and writing: listings that carry what a copy
is checked against, copies proven equal to their source, and small calls run concurrently."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ml_tasks.core.lake import Lake, LakeError, LocalLake, S3Lake, s3_objects
from ml_tasks.core.step import StepError

WORKERS = 10  # botocore's default connection pool size
T = TypeVar("T")
R = TypeVar("R")


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Small object-store calls are latency-bound: run them concurrently, in order."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class Listed:
    size: int
    etag: str | None  # MD5 of a single-part S3 object; None on a local lake


def check_claimable(lake: Lake) -> None:
    """Claiming needs conditional creates and verifiable copies: a local or an S3 lake."""
    if not isinstance(lake, LocalLake | S3Lake):
        raise StepError(f"cannot claim from a lake of type {type(lake).__name__}")


def listing(lake: Lake, prefix: str) -> dict[str, Listed]:
    """Every key under ``prefix`` with its size (and, on S3, its ETag), in one listing."""
    if isinstance(lake, S3Lake):
        strip = len(lake.prefix) + 1 if lake.prefix else 0
        return {
            obj["Key"][strip:]: Listed(int(obj["Size"]), str(obj["ETag"]).strip('"'))
            for obj in s3_objects(lake.client, lake.bucket, lake.object_key(prefix))
        }
    found: dict[str, Listed] = {}
    for key in lake.list(prefix):
        try:
            found[key] = Listed(lake.size(key), None)
        except FileNotFoundError:  # moved by another run between listing and stat
            continue
    return found


def copy_verified(lake: Lake, src: str, dst: str, source: Listed) -> None:
    """Copy ``src`` to ``dst`` and prove the copy equals the source, or raise."""
    if not isinstance(lake, S3Lake):
        lake.copy(src, dst)
        if _sha256(lake.read_bytes(src)) != _sha256(lake.read_bytes(dst)):
            raise LakeError(f"copy of {src} to {dst} differs from its source")
        return
    done = lake.client.copy_object(
        Bucket=lake.bucket,
        Key=lake.object_key(dst),
        CopySource={"Bucket": lake.bucket, "Key": lake.object_key(src)},
    )
    # The copy's ETag is the MD5 of what was written (single-part objects, which the model
    # service's small PUTs are): equal to the listed source's, the bytes are equal.
    etag = str(done["CopyObjectResult"]["ETag"]).strip('"')
    if etag != source.etag:
        raise LakeError(f"copy of {src} to {dst} differs from its source (ETag)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
