"""Sampled request images land in the lake (image and sidecar), metrics count requests and
writes, and a lake that is down fails no request."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_tasks.core.lake import s3_objects
from ml_tasks.data.images import content_hash, encode_png
from tests.serve.conftest import MODEL_NAME, RegisteredModel, Server, model_server, wait_until
from tests.serve.support import (
    BUCKET,
    SIDECAR_FIELDS,
    V1,
    b64,
    decoded,
    jpeg,
    pixel_array,
    s3_env,
    small_png,
)
from tests.servers import free_port

pytestmark = pytest.mark.slow


def test_sampled_requests_leave_image_and_sidecar_in_s3(
    storing_server: Server, s3: Any, registered: RegisteredModel
) -> None:
    images = registered.test_images[40:44]
    sent: dict[str, tuple[bytes, str]] = {}  # request id -> (encoded image, label served)
    for i, image in enumerate(images):
        encoded = encode_png(image) if i % 2 == 0 else jpeg(image)
        request_id = f"store-{i}"
        status, answer = storing_server.post(
            V1, {"instances": [{"b64": b64(encoded)}]}, headers={"X-Request-Id": request_id}
        )
        assert status == 200 and answer["request_id"] == request_id
        sent[request_id] = (encoded, answer["predictions"][0]["label"])

    def sidecars() -> dict[str, dict[str, Any]]:
        keys = [o["Key"] for o in s3_objects(s3, BUCKET, "incoming/")]
        found = {}
        for key in keys:
            if key.endswith(".json"):
                sidecar = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
                if sidecar["request_id"] in sent:
                    found[sidecar["request_id"]] = {**sidecar, "_key": key}
        return found if len(found) == len(sent) else {}

    found = wait_until(sidecars)
    for request_id, sidecar in found.items():
        encoded, label = sent[request_id]
        assert set(sidecar) - {"_key"} == SIDECAR_FIELDS
        png = s3.get_object(Bucket=BUCKET, Key=sidecar["image_key"])["Body"].read()
        digest = content_hash(png)
        day = sidecar["received_at"][:10]
        assert sidecar["image_key"] == f"incoming/{day}/{digest[:16]}.png"
        assert sidecar["_key"] == f"incoming/{day}/{digest[:16]}.json"
        assert sidecar["content_hash"] == digest
        assert sidecar["prediction"] == label
        assert sidecar["model_name"] == MODEL_NAME
        assert sidecar["model_version"] == registered.version
        assert sidecar["score"] == pytest.approx(max(sidecar["probabilities"].values()))
        assert sum(sidecar["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        if encoded.startswith(b"\x89PNG"):
            assert png == encoded  # PNGs are stored as received
        else:  # other formats: re-encoded without loss
            np.testing.assert_array_equal(decoded(png), decoded(encoded))
    assert storing_server.metric("flywheel_incoming_stored_total") >= len(sent)
    assert storing_server.metric("flywheel_incoming_failed_total") == 0


def test_metrics_count_requests_and_latency(storing_server: Server) -> None:
    assert storing_server.post(V1, {"instances": [pixel_array()]})[0] == 200
    with urllib.request.urlopen(storing_server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert (
        'flywheel_serve_request_seconds_bucket{le="0.008",model_name="digits",protocol="v1"}'
        in text
    )
    assert 'flywheel_serve_requests_total{model_name="digits",outcome="ok",protocol="v1"}' in text
    assert "flywheel_incoming_store_seconds_count" in text


def test_storage_down_requests_succeed_and_failures_are_counted(
    tmp_path: Path, registered: RegisteredModel
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**s3_env(closed), "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    with model_server(tmp_path, registered, "--sample-rate", "1.0", env=env) as server:
        for i in range(5):
            status, answer = server.post(
                V1,
                {"instances": [{"b64": b64(small_png())}]},
                headers={"X-Request-Id": f"down-{i}"},
            )
            assert status == 200 and answer["predictions"][0]["label"] in registered.classes
        wait_until(lambda: server.metric("flywheel_incoming_failed_total") >= 5)
        assert server.metric("flywheel_incoming_stored_total") == 0
        failures = [e for e in server.events() if e["action"] == "incoming_store_failed"]
        assert failures and failures[0]["lake"] == f"s3://{BUCKET}"
    stopped = [e for e in server.events() if e["action"] == "stopped"]
    assert stopped and stopped[-1]["failed"] >= 5, server.log.read_text()[-2000:]
