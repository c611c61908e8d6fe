"""``IncomingImagesTrigger.run`` against a real S3 endpoint (moto's server), as the triggerer
runs it: rebuilt from its own ``serialize()``, credentials and endpoint from the connection."""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import s3_client, s3_server

PREFIX = "root/incoming/"
CONN_ID = "flywheel_s3"


class Lake:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def put(self, *keys: str) -> None:
        for key in keys:
            body = b"{}" if key.endswith(".json") else b"png"
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)


@pytest.fixture
def lake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lake]:
    """A moto S3 endpoint with an empty bucket of its own (moto's store is per process),
    reachable through the ``flywheel_s3`` connection, defined in the environment as a
    deployment's secrets backend would."""
    with s3_server() as url:
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN_ID.upper()}",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": url, "region_name": "us-east-1"},
                }
            ),
        )
        client = s3_client(url)
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        yield Lake(client, bucket)


def as_the_triggerer_builds_it(bucket: str, min_images: int) -> Any:
    from flywheel_airflow.triggers.incoming import IncomingImagesTrigger

    classpath, kwargs = IncomingImagesTrigger(
        bucket=bucket, prefix=PREFIX, min_images=min_images, aws_conn_id=CONN_ID, poke_interval=0.05
    ).serialize()
    module, name = classpath.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def test_fires_once_the_threshold_is_reached_and_not_before(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_tasks.annotation import batches

    counted: list[int] = []  # what each poll found
    real_count = batches.count_waiting

    def count_waiting(keys: Any, prefix: str) -> int:
        counted.append(real_count(keys, prefix))
        return counted[-1]

    monkeypatch.setattr(batches, "count_waiting", count_waiting)
    lake.put(
        f"{PREFIX}2026-01-01/a.png",
        f"{PREFIX}2026-01-01/a.json",
        f"{PREFIX}2026-01-02/b.png",
        f"{PREFIX}2026-01-02/b.json",
        f"{PREFIX}2026-01-02/c.png",  # its sidecar is not written yet: not waiting
        "root/labeled/d.png",  # outside the prefix
        "root/labeled/d.json",
    )

    async def scenario() -> tuple[list[Any], Any, int]:
        events = as_the_triggerer_builds_it(lake.bucket, min_images=3).run()
        first = asyncio.ensure_future(anext(events))
        async with asyncio.timeout(30):  # let it poll a few times (every 0.05 s)
            while len(counted) < 5 and not first.done():
                await asyncio.sleep(0.05)
        early = [first.result()] if first.done() else []
        polls_before = len(counted)
        await asyncio.to_thread(lake.put, f"{PREFIX}2026-01-02/c.json")
        event = await asyncio.wait_for(first, timeout=30)
        with pytest.raises(StopAsyncIteration):  # one event, then the trigger is done
            await anext(events)
        assert counted[:polls_before] == [2] * polls_before  # only image + sidecar pairs
        return early, event, polls_before

    early, event, polls_before = asyncio.run(scenario())
    assert early == []
    assert polls_before >= 5, "the trigger did not keep polling while too few images waited"
    assert counted[-1] == 3
    assert event.payload == {"status": "ready", "waiting": 3}


def test_fires_on_the_first_poll_when_enough_images_wait(lake: Lake) -> None:
    lake.put(*(f"{PREFIX}2026-01-01/{i}.{suffix}" for i in range(3) for suffix in ("png", "json")))

    async def first_event() -> Any:
        return await asyncio.wait_for(
            anext(as_the_triggerer_builds_it(lake.bucket, min_images=2).run()), 30
        )

    assert asyncio.run(first_event()).payload == {"status": "ready", "waiting": 3}


def test_a_missing_bucket_is_reported_as_an_error_event(lake: Lake) -> None:
    async def first_event() -> Any:
        trigger = as_the_triggerer_builds_it("no-such-bucket", min_images=1)
        return await asyncio.wait_for(anext(trigger.run()), 30)

    payload = asyncio.run(first_event()).payload
    assert payload["status"] == "error" and "NoSuchBucket" in payload["message"]


def test_a_trigger_subclass_without_its_own_dataclass_fields_refuses_to_serialize() -> None:
    from flywheel_airflow.triggers.incoming import IncomingImagesTrigger

    class WithMoreState(IncomingImagesTrigger):  # forgot @dataclass: `extra` would be lost
        extra = "kept?"

    trigger = WithMoreState(bucket="b", prefix="p", min_images=1, aws_conn_id=None)
    with pytest.raises(TypeError, match="must be decorated with @dataclass"):
        trigger.serialize()
    assert IncomingImagesTrigger(**trigger_kwargs()).serialize()[1] == trigger_kwargs()


def trigger_kwargs() -> dict[str, Any]:
    return {
        "bucket": "b",
        "prefix": "p",
        "min_images": 1,
        "aws_conn_id": None,
        "poke_interval": 60.0,
    }
