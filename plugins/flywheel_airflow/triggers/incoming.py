"""Wait, on the triggerer, until enough images wait in the lake's ``incoming/`` prefix.

Why not ``S3KeySensor`` + ``check_fn``: its trigger lists with ``Delimiter="/"``, so keys in
``incoming/<date>/`` (the model service's layout) never reach ``check_fn``, and it issues one
HEAD request per key and sleeps a full poke interval *after* finding them. This trigger lists
the prefix recursively (one request per 1,000 keys), counts images whose sidecar exists, and
fires as soon as at least ``min_images`` wait: ``{"status": "ready", "waiting": N}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from airflow.triggers.base import TriggerEvent

from flywheel_airflow.triggers.state import FieldsTrigger


@dataclass(kw_only=True, eq=False, repr=False)
class IncomingImagesTrigger(FieldsTrigger):
    """Poll ``s3://bucket/prefix`` until ``min_images`` images with sidecars wait there."""

    bucket: str
    prefix: str
    min_images: int
    aws_conn_id: str | None
    poke_interval: float = 60.0

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from ml_tasks.annotation.batches import count_waiting

        hook = S3Hook(aws_conn_id=self.aws_conn_id)
        try:
            async with await hook.get_async_conn() as client:
                while True:
                    keys: list[str] = []
                    paginator = client.get_paginator("list_objects_v2")
                    async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                        keys += [obj["Key"] for obj in page.get("Contents", [])]
                    waiting = count_waiting(keys, self.prefix)
                    if waiting >= self.min_images:
                        yield TriggerEvent({"status": "ready", "waiting": waiting})
                        return
                    self.log.info("%d of %d images waiting", waiting, self.min_images)
                    await asyncio.sleep(self.poke_interval)
        except Exception as exc:  # report on the task instead of dying silently on the triggerer
            yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
