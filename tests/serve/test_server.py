"""The model server over HTTP: both protocols, bad input, loopback binding, stored inputs.

One real server (``python -m ml_tasks.serve``) per module, storing every input in a local S3
endpoint (moto), on a model trained and registered in the test; predictions are checked
against the same registered model evaluated in this process.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_tasks.core.lake import s3_objects
from ml_tasks.data.images import content_hash, decode_image, encode_png
from tests.serve.conftest import MODEL_NAME, RegisteredModel, Server, model_server, wait_until
from tests.servers import free_port, s3_client, s3_server

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
BUCKET = "flywheel-serve"
SIDECAR_FIELDS = {
    "content_hash",
    "prediction",
    "score",
    "probabilities",
    "model_name",
    "model_version",
    "request_id",
    "received_at",
    "image_key",
}
LIMITS = [
    "--max-image-bytes",
    "65536",
    "--max-pixels",
    "1000000",
    "--max-batch",
    "32",
    "--max-request-bytes",
    "2000000",
]

pytestmark = pytest.mark.slow


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def big_png(side: int, noise: bool) -> bytes:
    rng = np.random.default_rng(1)
    pixels = (
        rng.integers(0, 256, (side, side), dtype=np.uint8)
        if noise
        else np.zeros((side, side), dtype=np.uint8)
    )
    return encode_png(pixels)


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FLYWHEEL_LAKE_URI": f"s3://{BUCKET}",
    }


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:

    client = s3_client(s3_endpoint, "test", "test")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, registered: RegisteredModel, s3: Any, s3_endpoint: str
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("served")
    with model_server(
        workdir, registered, *LIMITS, "--sample-rate", "1.0", env=s3_env(s3_endpoint)
    ) as running:
        yield running


def expected(classifier: Any, encoded: list[bytes]) -> np.ndarray:
    pixels = np.stack([decode_image(data, size=8) for data in encoded]) / 255.0
    result: np.ndarray = classifier.predict_proba(pixels)
    return result


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listens_on_loopback_only_without_grpc(server: Server) -> None:
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    mine = [
        line.split()[3]
        for line in listening.stdout.splitlines()
        if f"pid={server.proc.pid}," in line
    ]
    assert mine == [server.url.removeprefix("http://")]


def test_json_content_type_with_charset_or_none_is_understood(server: Server) -> None:
    body = json.dumps({"instances": [_pixels()]}).encode()
    for content_type in ("application/json; charset=utf-8", ""):
        status, answer = server.post(V1, None, headers={"Content-Type": content_type}, raw=body)
        assert status == 200, (content_type, answer)
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8], "data": [0.5] * 64}]}
    ).encode()
    status, answer = server.post(
        V2, None, headers={"Content-Type": "application/json; charset=utf-8"}, raw=body
    )
    assert status == 200, answer


def test_health_and_metadata(server: Server, registered: RegisteredModel) -> None:
    import urllib.request

    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready"):
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"{server.url}/v2/models/{MODEL_NAME}", timeout=10) as response:
        metadata = json.loads(response.read())
    assert {i["name"] for i in metadata["inputs"]} == {"image", "pixels"}
    assert {o["name"] for o in metadata["outputs"]} == {
        "label",
        "score",
        "probabilities",
        "classes",
    }


def test_v1_images_and_pixel_arrays_match_the_model(
    server: Server, registered: RegisteredModel, classifier: Any
) -> None:
    images = registered.test_images[:24]
    pngs = [encode_png(image) for image in images]
    jpegs = [jpeg(image) for image in images[:4]]
    status, answer = server.post(V1, {"instances": [{"b64": b64(p)} for p in pngs + jpegs]})
    assert status == 200, answer
    probabilities = expected(classifier, pngs + jpegs)
    classes = registered.classes
    assert answer["model_name"] == MODEL_NAME and answer["model_version"] == registered.version
    assert [p["label"] for p in answer["predictions"]] == [
        classes[i] for i in probabilities.argmax(1)
    ]
    served = np.array([[p["probabilities"][c] for c in classes] for p in answer["predictions"]])
    np.testing.assert_allclose(served, probabilities, atol=1e-5)
    np.testing.assert_allclose(
        [p["score"] for p in answer["predictions"]], probabilities.max(1), atol=1e-5
    )
    # Not a degenerate model: the comparison above means something.
    assert len({p["label"] for p in answer["predictions"]}) >= 5

    status, answer = server.post(V1, {"instances": (images / 255.0).tolist()})
    assert status == 200, answer
    np.testing.assert_allclose(
        [[p["probabilities"][c] for c in classes] for p in answer["predictions"]],
        probabilities[: len(images)],
        atol=1e-5,
    )


def test_v2_bytes_fp32_and_uint8_match_the_model(
    server: Server, registered: RegisteredModel, classifier: Any
) -> None:
    images = registered.test_images[24:40]
    pngs = [encode_png(image) for image in images]
    probabilities = expected(classifier, pngs)
    labels = [registered.classes[i] for i in probabilities.argmax(1)]
    requests = [
        {
            "name": "image",
            "datatype": "BYTES",
            "shape": [len(pngs)],
            "data": [b64(p) for p in pngs],
        },
        {
            "name": "pixels",
            "datatype": "UINT8",
            "shape": [len(images), 8, 8],
            "data": images.tolist(),
        },
        {
            "name": "pixels",
            "datatype": "FP32",
            "shape": [len(images), 1, 8, 8],
            "data": (images / 255.0).ravel().tolist(),
        },
    ]
    for tensor in requests:
        status, answer = server.post(V2, {"id": "v2-test", "inputs": [tensor]})
        assert status == 200, answer
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert answer["id"] == "v2-test" and answer["model_version"] == registered.version
        assert outputs["label"]["data"] == labels
        assert outputs["classes"]["data"] == registered.classes
        assert outputs["probabilities"]["shape"] == [len(images), 10]
        np.testing.assert_allclose(
            np.reshape(outputs["probabilities"]["data"], (len(images), 10)),
            probabilities,
            atol=1e-5,
        )

    status, answer = server.post(V2, {"inputs": [requests[0]], "outputs": [{"name": "label"}]})
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["label"]


def _pixels(value: Any = 0.5, side: int = 8) -> list[list[Any]]:
    return [[value] * side for _ in range(side)]


def _png() -> bytes:
    return encode_png(np.full((8, 8), 200, dtype=np.uint8))


BAD_V1: list[tuple[str, Any, str]] = [
    ("not an image", {"instances": [{"b64": b64(b"hello, not an image")}]}, "not a readable image"),
    ("truncated image", {"instances": [{"b64": b64(big_png(64, True)[:200])}]}, "instances[0].b64"),
    ("not base64", {"instances": [{"b64": "***"}]}, "not valid base64"),
    (
        "too many bytes",
        {"instances": [{"b64": b64(big_png(300, True))}]},
        "over the limit of 65536",
    ),
    (
        "too many pixels",
        {"instances": [{"b64": b64(big_png(2000, False))}]},
        "over the limit of 1000000 pixels",
    ),
    ("wrong shape", {"instances": [_pixels(side=7)]}, "must be 8x8"),
    ("ragged rows", {"instances": [[[0.5] * 8] * 7 + [[0.5] * 3]]}, "rectangular"),
    ("wrong dtype", {"instances": [_pixels("0.5")]}, "must be numbers"),
    ("out of range", {"instances": [_pixels(2.0)]}, "[0, 1]"),
    ("empty batch", {"instances": []}, "no images"),
    ("batch too large", {"instances": [_pixels()] * 33}, "over the limit of 32"),
    ("unknown field", {"instances": [_pixels()], "signature_name": "x"}, "'signature_name'"),
    ("unknown instance field", {"instances": [{"b64": b64(_png()), "key": 1}]}, "'key'"),
    ("no instances", {"inputs": [_pixels()]}, "unknown field(s) 'inputs'"),
    ("instance of wrong type", {"instances": ["iVBOR"]}, "got a string"),
]

BAD_V2: list[tuple[str, Any, str]] = [
    (
        "unknown request field",
        {
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8], "data": [0.0] * 64}
            ],
            "model": "x",
        },
        "'model'",
    ),
    (
        "unknown input field",
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [1, 8, 8],
                    "contents": [0.0] * 64,
                    "data": [],
                }
            ]
        },
        "'contents'",
    ),
    ("no inputs", {"id": "x"}, "invalid inference request"),
    (
        "wrong datatype",
        {"inputs": [{"name": "pixels", "datatype": "INT64", "shape": [1, 8, 8], "data": [0] * 64}]},
        "datatype must be FP32",
    ),
    (
        "wrong shape",
        {
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [1, 7, 7], "data": [0.0] * 49}
            ]
        },
        "shape must be [N, 8, 8]",
    ),
    (
        "data does not fit shape",
        {
            "inputs": [
                {"name": "pixels", "datatype": "FP32", "shape": [2, 8, 8], "data": [0.0] * 64}
            ]
        },
        "needs 128 values",
    ),
    (
        "uint8 out of range",
        {
            "inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8], "data": [300] * 64}
            ]
        },
        "0..255",
    ),
    (
        "two inputs",
        {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(_png())]}]
            * 2
        },
        "exactly one input",
    ),
    (
        "unknown input name",
        {"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "data": [b64(_png())]}]},
        "unknown input 'img'",
    ),
    (
        "empty batch",
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]},
        "no images",
    ),
    (
        "not an image",
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(b"GIF? no")]}
            ]
        },
        "not a readable image",
    ),
    (
        "unknown output",
        {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(_png())]}],
            "outputs": [{"name": "logits"}],
        },
        "unknown output 'logits'",
    ),
    (
        "unknown parameter",
        {
            "parameters": {"temperature": 2},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(_png())]}],
        },
        "'temperature'",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_V1, ids=[c[0] for c in BAD_V1])
def test_bad_v1_input_is_400_and_the_server_stays_healthy(
    server: Server, case: str, body: Any, message: str
) -> None:
    status, answer = server.post(V1, body)
    assert status == 400, (case, answer)
    assert message in answer["error"], answer
    assert "Traceback" not in answer["error"]
    status, answer = server.post(V1, {"instances": [{"b64": b64(_png())}]})
    assert status == 200 and len(answer["predictions"]) == 1


@pytest.mark.parametrize(("case", "body", "message"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_input_is_400_and_the_server_stays_healthy(
    server: Server, case: str, body: Any, message: str
) -> None:
    status, answer = server.post(V2, body)
    assert status == 400, (case, answer)
    assert message in answer["error"], answer
    good = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(_png())]}]}
    status, answer = server.post(V2, good)
    assert status == 200 and answer["outputs"][0]["data"]


@pytest.mark.parametrize(
    ("case", "path", "raw", "content_type", "message"),
    [
        ("v1 not JSON", V1, b"{not json", "application/json", "Unrecognized request format"),
        (
            "v1 an image body",
            V1,
            encode_png(np.zeros((8, 8), np.uint8)),
            "image/png",
            "send Content-Type: application/json (got 'image/png')",
        ),
        ("v2 form body", V2, b'{"inputs": []}', "application/x-www-form-urlencoded", "take JSON"),
        ("v2 binary extension", V2, b"\0" * 64, "application/octet-stream", "take JSON"),
        ("v2 not JSON", V2, b"{not json", "application/json", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400(
    server: Server, case: str, path: str, raw: bytes, content_type: str, message: str
) -> None:
    status, answer = server.post(path, None, headers={"Content-Type": content_type}, raw=raw)
    assert status == 400, (case, answer)
    assert message in answer["error"]
    assert server.post(V1, {"instances": [_pixels()]})[0] == 200


def test_body_over_the_limit_is_refused_before_it_is_read(server: Server) -> None:
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # Declare 2.5 MB (the limit is 2 MB) and send only the start: the answer comes anyway.
        sock.sendall(
            f"POST {V1} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2500000\r\n\r\n".encode()
            + b" " * 1000
        )
        answer = ""
        while "}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk.decode()
    assert answer.startswith("HTTP/1.1 400"), answer
    assert "over the limit of 2000000" in answer
    assert server.post(V1, {"instances": [_pixels()]})[0] == 200


def test_sampled_requests_leave_image_and_sidecar_in_s3(
    server: Server, s3: Any, registered: RegisteredModel
) -> None:
    images = registered.test_images[40:44]
    sent: dict[str, tuple[bytes, str]] = {}  # request id -> (encoded image, label served)
    for i, image in enumerate(images):
        encoded = encode_png(image) if i % 2 == 0 else jpeg(image)
        request_id = f"store-{i}"
        status, answer = server.post(
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
            np.testing.assert_array_equal(_decoded(png), _decoded(encoded))
    assert server.metric("flywheel_incoming_stored_total") >= len(sent)
    assert server.metric("flywheel_incoming_failed_total") == 0


def _decoded(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_metrics_count_requests_and_latency(server: Server) -> None:
    import urllib.request

    assert server.post(V1, {"instances": [_pixels()]})[0] == 200
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
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
                V1, {"instances": [{"b64": b64(_png())}]}, headers={"X-Request-Id": f"down-{i}"}
            )
            assert status == 200 and answer["predictions"][0]["label"] in registered.classes
        wait_until(lambda: server.metric("flywheel_incoming_failed_total") >= 5)
        assert server.metric("flywheel_incoming_stored_total") == 0
        failures = [e for e in server.events() if e["action"] == "incoming_store_failed"]
        assert failures and failures[0]["lake"] == f"s3://{BUCKET}"
    stopped = [e for e in server.events() if e["action"] == "stopped"]
    assert stopped and stopped[-1]["failed"] >= 5, server.log.read_text()[-2000:]
