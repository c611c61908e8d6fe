"""What the server refuses, and how it says so: the v2 shape/datatype matrix (a bad-input
corpus), every 4xx counted by reason on ``/metrics``, 405 and 404 answered without tracebacks.

One real server (``python -m ml_tasks.serve``, storing off) on a model trained and registered
in the test.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ml_tasks.data.images import encode_png
from tests.serve.conftest import Server
from tests.serve.support import V1, V2

pytestmark = pytest.mark.slow


SERVER_ARGS = ["--max-request-bytes", "100000"]  # the module's server (conftest)


def _grid(shape: tuple[int, ...], value: Any = 0.5) -> Any:
    return np.full(shape, value).tolist()


def _flat(count: int, value: Any = 0.5) -> list[Any]:
    return [value] * count


PNG = base64.b64encode(encode_png(np.full((8, 8), 200, dtype=np.uint8))).decode()
Case = tuple[str, str, list[int], Callable[[], Any], int, str]

# name, datatype, declared shape, data, status, a part of the answer
V2_MATRIX: list[Case] = [
    ("fp32 flat", "FP32", [1, 8, 8], lambda: _flat(64), 200, ""),
    ("fp32 nested as shape", "FP32", [1, 8, 8], lambda: _grid((1, 8, 8)), 200, ""),
    ("fp32 channel nested", "FP32", [2, 1, 8, 8], lambda: _grid((2, 1, 8, 8)), 200, ""),
    ("fp32 integers", "FP32", [1, 8, 8], lambda: _flat(64, 0), 200, ""),
    ("uint8 nested", "UINT8", [2, 8, 8], lambda: _grid((2, 8, 8), 255), 200, ""),
    ("bytes image", "BYTES", [1], lambda: [PNG], 200, ""),
    ("nested 2x32", "FP32", [1, 8, 8], lambda: _grid((2, 32)), 400, "nested as [2, 32]"),
    ("nested 4x4x4", "FP32", [1, 8, 8], lambda: _grid((4, 4, 4)), 400, "nested as [4, 4, 4]"),
    ("nested 1x8x8x1", "FP32", [1, 8, 8], lambda: _grid((1, 8, 8, 1)), 400, "[1, 8, 8, 1]"),
    ("nested without batch", "FP32", [1, 8, 8], lambda: _grid((8, 8)), 400, "nested as [8, 8]"),
    ("nested without channel", "FP32", [1, 1, 8, 8], lambda: _grid((1, 8, 8)), 400, "nested"),
    ("uint8 nested 2x64", "UINT8", [2, 8, 8], lambda: _grid((2, 64), 1), 400, "nested as"),
    ("flat too short", "FP32", [2, 8, 8], lambda: _flat(64), 400, "needs 128 values"),
    ("flat too long", "FP32", [1, 8, 8], lambda: _flat(65), 400, "needs 64 values"),
    ("booleans", "FP32", [1, 8, 8], lambda: [True, *_flat(63)], 400, "must be numbers"),
    ("strings", "FP32", [1, 8, 8], lambda: _flat(64, "0.5"), 400, "must be numbers"),
    ("ragged", "FP32", [1, 8, 8], lambda: [[0.5] * 8] * 7 + [[0.5] * 3], 400, "rectangular"),
    ("uint8 floats", "UINT8", [1, 8, 8], lambda: _flat(64, 0.5), 400, "integers 0..255"),
    ("uint8 negative", "UINT8", [1, 8, 8], lambda: _flat(64, -1), 400, "integers 0..255"),
    ("fp32 over one", "FP32", [1, 8, 8], lambda: _flat(64, 1.5), 400, "[0, 1]"),
    ("fp64", "FP64", [1, 8, 8], lambda: _flat(64), 400, "datatype must be FP32"),
    ("int32", "INT32", [1, 8, 8], lambda: _flat(64, 1), 400, "datatype must be FP32"),
    ("bytes pixels", "BYTES", [1, 8, 8], lambda: _flat(64), 400, "datatype must be FP32"),
    ("negative batch", "FP32", [-1, 8, 8], lambda: _flat(64), 400, "negative dimension"),
    ("wrong image side", "FP32", [1, 64], lambda: _flat(64), 400, "shape must be [N, 8, 8]"),
    ("trailing axis", "FP32", [1, 8, 8, 1], lambda: _flat(64), 400, "shape must be [N, 8, 8]"),
    ("zero batch", "FP32", [0, 8, 8], lambda: [], 400, "no images"),
]
# The same for the image input (BYTES, shape [N]).
V2_IMAGE_MATRIX: list[Case] = [
    ("image fp32", "FP32", [1], lambda: [PNG], 400, "datatype must be BYTES"),
    ("image 2-d shape", "BYTES", [1, 1], lambda: [PNG], 400, "shape must be [N]"),
    ("image count", "BYTES", [2], lambda: [PNG], 400, "data holds 1"),
    ("image nested", "BYTES", [1], lambda: [[PNG]], 400, "expected a base64 string"),
    ("image number", "BYTES", [1], lambda: [3], 400, "expected a base64 string"),
]


@pytest.mark.parametrize(
    ("case", "datatype", "shape", "data", "status", "message"),
    V2_MATRIX + V2_IMAGE_MATRIX,
    ids=[c[0] for c in V2_MATRIX + V2_IMAGE_MATRIX],
)
def test_v2_shape_and_datatype_matrix(
    server: Server,
    case: str,
    datatype: str,
    shape: list[int],
    data: Callable[[], Any],
    status: int,
    message: str,
) -> None:
    name = "image" if case.startswith(("image", "bytes image")) else "pixels"
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data()}
    answered, answer = server.post(V2, {"inputs": [tensor]})
    assert answered == status, (case, answer)
    if status == 200:
        assert len(answer["outputs"][0]["data"]) == shape[0]
    else:
        assert message in answer["error"], answer


def _refusals(server: Server) -> dict[tuple[str, str, str], float]:
    """``flywheel_serve_refused_total`` by (model_name, status, reason)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.labels["model_name"], s.labels["status"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "flywheel_serve_refused_total"
    }


def _send(server: Server, method: str, path: str, raw: bytes = b"", **headers: str) -> int:
    request = urllib.request.Request(server.url + path, data=raw or None, method=method)
    for key, value in {"Content-Type": "application/json", **headers}.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _declared_too_big(server: Server) -> int:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {V1} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 200000\r\n\r\n".encode()
        )
        return int(sock.recv(65536)[9:12])


def test_every_4xx_is_counted_by_reason(server: Server) -> None:
    v2_pixels = {"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8], "data": _flat(64)}
    sends: list[tuple[tuple[str, str, str], Callable[[], int]]] = [
        (
            ("digits", "400", "wrong_content_type"),
            lambda: _send(server, "POST", V1, b"x", **{"Content-Type": "image/png"}),
        ),
        (("digits", "400", "body_too_large"), lambda: _declared_too_big(server)),
        (("digits", "400", "not_json"), lambda: _send(server, "POST", V1, b"{not json")),
        (("digits", "400", "not_json"), lambda: _send(server, "POST", V2, b"{not json")),
        (
            ("digits", "400", "unknown_field"),
            lambda: server.post(V2, {"inputs": [v2_pixels], "model": "x"})[0],
        ),
        (("digits", "400", "invalid_request"), lambda: server.post(V2, {"id": "x"})[0]),
        (
            ("digits", "400", "not_an_image"),
            lambda: server.post(V1, {"instances": [{"b64": base64.b64encode(b"hello").decode()}]})[
                0
            ],
        ),
        (("digits", "405", "method_not_allowed"), lambda: _send(server, "GET", V1)),
        (
            ("", "404", "unknown_model"),
            lambda: server.post("/v1/models/nobody:predict", {"instances": [_grid((8, 8))]})[0],
        ),
        (("", "404", "not_found"), lambda: _send(server, "GET", "/no/such/route")),
    ]
    before = _refusals(server)
    expected: dict[tuple[str, str, str], int] = {}
    for key, send in sends:
        assert send() == int(key[1]), key
        expected[key] = expected.get(key, 0) + 1
    after = _refusals(server)
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(expected)}
    assert {k: v for k, v in counted.items() if v} == expected


def test_get_on_predict_is_405_not_404(server: Server) -> None:
    for path in (V1, V2):
        request = urllib.request.Request(server.url + path, method="GET")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 405, path
        assert answer.value.headers["Allow"] == "POST"
        assert "takes POST" in json.loads(answer.value.read())["error"]


def test_unknown_model_is_404_logged_in_one_line(server: Server) -> None:
    start = server.log.stat().st_size
    status, answer = server.post("/v1/models/nobody:predict", {"instances": [_grid((8, 8))]})
    assert status == 404 and "nobody" in answer["error"]
    status, _ = server.post(V1, {"instances": [_grid((8, 8))]})  # a later line: the log is flushed
    assert status == 200
    with server.log.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    assert "nobody" in written, written
    assert "Traceback" not in written, written
