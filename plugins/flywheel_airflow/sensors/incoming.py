"""IncomingImagesSensor: fire when at least X images (with sidecars) wait in ``incoming/``.

The lake is ``lake_uri`` (templated) or, when empty, the resolved Flywheel setting
(``FLYWHEEL_LAKE_URI``); credentials and endpoint come from the ``aws`` connection. The first
check runs on the worker; after that the wait is deferred to :class:`IncomingImagesTrigger`
on the triggerer (checking every ``poke_seconds``), so a quiet day holds no worker slot.
XCom: how many images were waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator

from flywheel_airflow.triggers.incoming import IncomingImagesTrigger


def incoming_location(lake_uri: str) -> tuple[str, str]:
    """``s3://bucket/root`` -> ``("bucket", "root/incoming/")``."""
    from urllib.parse import urlparse

    parsed = urlparse(lake_uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"the annotation loop needs an s3:// lake, got {lake_uri!r}")
    root = parsed.path.strip("/")
    return parsed.netloc, f"{root}/incoming/" if root else "incoming/"


class IncomingImagesSensor(BaseSensorOperator):
    """Wait until ``min_images`` images with sidecars wait under the lake's ``incoming/``."""

    template_fields: Sequence[str] = ("lake_uri", "min_images", "poke_seconds")

    def __init__(
        self,
        *,
        min_images: int | str,
        lake_uri: str = "",
        aws_conn_id: str | None = "flywheel_s3",
        poke_seconds: float | str = 60.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min_images = min_images
        self.lake_uri = lake_uri
        self.aws_conn_id = aws_conn_id
        self.poke_seconds = poke_seconds
        self.deferrable = deferrable

    def _location(self) -> tuple[str, str]:
        from ml_tasks.core.settings import load_settings

        return incoming_location(self.lake_uri or load_settings().lake_uri)

    def waiting(self) -> int:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from ml_tasks.annotation.batches import count_waiting
        from ml_tasks.core.lake import s3_objects

        bucket, prefix = self._location()
        client = S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        keys = [obj["Key"] for obj in s3_objects(client, bucket, prefix)]
        return count_waiting(keys, prefix)

    def poke(self, context: Any) -> bool | Any:
        from airflow.sdk import PokeReturnValue

        waiting = self.waiting()
        self.log.info("%d images waiting (need %s)", waiting, self.min_images)
        return PokeReturnValue(is_done=waiting >= int(self.min_images), xcom_value=waiting)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        waiting = self.waiting()
        if waiting >= int(self.min_images):
            return waiting
        bucket, prefix = self._location()
        self.defer(
            trigger=IncomingImagesTrigger(
                bucket=bucket,
                prefix=prefix,
                min_images=int(self.min_images),
                aws_conn_id=self.aws_conn_id,
                poke_interval=float(self.poke_seconds),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> int:
        if event.get("status") != "ready":
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException(f"waiting for images failed: {event.get('message')}")
        return int(event["waiting"])
