"""Helpers shared by the annotation tests (a module name no other test folder uses)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import REPO, steps_python

HELPER = Path(__file__).with_name("steps_helper.py")
MODEL_NAME = "digits-annotation-tests"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def run_helper(*args: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [steps_python(), str(HELPER), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"steps_helper {args[0]} failed:\n{done.stderr[-3000:]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


@dataclass
class Loop:
    """One test's world: its bucket, dataset name, repository and servers."""

    bucket: str
    dataset: str
    repo: Path
    home: Path
    s3_endpoint: str
    label_studio: Any
    champion: str

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            **{
                "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
                "region_name": AWS["AWS_DEFAULT_REGION"],
            },
        )

    def keys(self, prefix: str) -> list[str]:
        from ml_tasks.core.lake import s3_objects

        return [o["Key"] for o in s3_objects(self.s3(), self.bucket, prefix)]

    def put_incoming(self, count: int, seed: int) -> list[str]:
        return list(
            run_helper(
                "incoming",
                "--bucket",
                self.bucket,
                "--count",
                str(count),
                "--seed",
                str(seed),
                "--model-version",
                self.champion,
            )
        )

    def label_studio_client(self) -> Any:
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.label_studio.url, api_key=self.label_studio.token)

    def project_id(self) -> int:
        from ml_tasks.annotation.tasks import project_title

        title = project_title(self.dataset)
        found = [
            p for p in self.label_studio_client().projects.list(title=title) if p.title == title
        ]
        assert len(found) == 1, f"expected one project {title!r}, found {len(found)}"
        return int(found[0].id)

    def tasks(self) -> list[Any]:
        ls = self.label_studio_client()
        return sorted(
            ls.tasks.list(project=self.project_id(), fields="all", page_size=1000),
            key=lambda t: t.id,
        )


__all__ = ["AWS", "MODEL_NAME", "REPO", "Loop", "run_helper"]
