"""The model server over HTTP: both protocols agree with the model, health and metadata, and
it listens on loopback only.

The storing server (``storing_server``, conftest) runs on a model trained and registered in
the test; predictions are checked against the same registered model evaluated in this process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import numpy as np
import pytest

from ml_tasks.data.images import encode_png
from tests.serve.conftest import MODEL_NAME, RegisteredModel, Server
from tests.serve.support import V1, V2, b64, expected, jpeg, pixel_array

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listens_on_loopback_only_without_grpc(storing_server: Server) -> None:
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    mine = [
        line.split()[3]
        for line in listening.stdout.splitlines()
        if f"pid={storing_server.proc.pid}," in line
    ]
    assert mine == [storing_server.url.removeprefix("http://")]


def test_json_content_type_with_charset_or_none_is_understood(storing_server: Server) -> None:
    body = json.dumps({"instances": [pixel_array()]}).encode()
    for content_type in ("application/json; charset=utf-8", ""):
        status, answer = storing_server.post(
            V1, None, headers={"Content-Type": content_type}, raw=body
        )
        assert status == 200, (content_type, answer)
    body = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8], "data": [0.5] * 64}]}
    ).encode()
    status, answer = storing_server.post(
        V2, None, headers={"Content-Type": "application/json; charset=utf-8"}, raw=body
    )
    assert status == 200, answer


def test_health_and_metadata(storing_server: Server, registered: RegisteredModel) -> None:
    import urllib.request

    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready"):
        with urllib.request.urlopen(storing_server.url + path, timeout=10) as response:
            assert response.status == 200
    with urllib.request.urlopen(
        f"{storing_server.url}/v2/models/{MODEL_NAME}", timeout=10
    ) as response:
        metadata = json.loads(response.read())
    assert {i["name"] for i in metadata["inputs"]} == {"image", "pixels"}
    assert {o["name"] for o in metadata["outputs"]} == {
        "label",
        "score",
        "probabilities",
        "classes",
    }


def test_v1_images_and_pixel_arrays_match_the_model(
    storing_server: Server, registered: RegisteredModel, classifier: Any
) -> None:
    images = registered.test_images[:24]
    pngs = [encode_png(image) for image in images]
    jpegs = [jpeg(image) for image in images[:4]]
    status, answer = storing_server.post(V1, {"instances": [{"b64": b64(p)} for p in pngs + jpegs]})
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

    status, answer = storing_server.post(V1, {"instances": (images / 255.0).tolist()})
    assert status == 200, answer
    np.testing.assert_allclose(
        [[p["probabilities"][c] for c in classes] for p in answer["predictions"]],
        probabilities[: len(images)],
        atol=1e-5,
    )


def test_v2_bytes_fp32_and_uint8_match_the_model(
    storing_server: Server, registered: RegisteredModel, classifier: Any
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
        status, answer = storing_server.post(V2, {"id": "v2-test", "inputs": [tensor]})
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

    status, answer = storing_server.post(
        V2, {"inputs": [requests[0]], "outputs": [{"name": "label"}]}
    )
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["label"]
