"""Bad requests are answered 400 with what is wrong, and the server stays healthy: unreadable
images, wrong shapes and datatypes, bodies that are not JSON, a body over the byte limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_tasks.data.images import encode_png
from tests.serve.conftest import Server
from tests.serve.support import V1, V2, b64, big_png, pixel_array, small_png

pytestmark = pytest.mark.slow


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
    ("wrong shape", {"instances": [pixel_array(side=7)]}, "must be 8x8"),
    ("ragged rows", {"instances": [[[0.5] * 8] * 7 + [[0.5] * 3]]}, "rectangular"),
    ("wrong dtype", {"instances": [pixel_array("0.5")]}, "must be numbers"),
    ("out of range", {"instances": [pixel_array(2.0)]}, "[0, 1]"),
    ("empty batch", {"instances": []}, "no images"),
    ("batch too large", {"instances": [pixel_array()] * 33}, "over the limit of 32"),
    ("unknown field", {"instances": [pixel_array()], "signature_name": "x"}, "'signature_name'"),
    ("unknown instance field", {"instances": [{"b64": b64(small_png()), "key": 1}]}, "'key'"),
    ("no instances", {"inputs": [pixel_array()]}, "unknown field(s) 'inputs'"),
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
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(small_png())]}
            ]
            * 2
        },
        "exactly one input",
    ),
    (
        "unknown input name",
        {
            "inputs": [
                {"name": "img", "datatype": "BYTES", "shape": [1], "data": [b64(small_png())]}
            ]
        },
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
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(small_png())]}
            ],
            "outputs": [{"name": "logits"}],
        },
        "unknown output 'logits'",
    ),
    (
        "unknown parameter",
        {
            "parameters": {"temperature": 2},
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(small_png())]}
            ],
        },
        "'temperature'",
    ),
]


# One good request per route, sent after each bad one: the server must still answer it.
GOOD = {
    V1: {"instances": [{"b64": b64(small_png())}]},
    V2: {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(small_png())]}]
    },
}
BAD = [(V1, *case) for case in BAD_V1] + [(V2, *case) for case in BAD_V2]


@pytest.mark.parametrize(
    ("route", "case", "body", "message"),
    BAD,
    ids=[f"{'v1' if route == V1 else 'v2'} {case}" for route, case, _, _ in BAD],
)
def test_bad_input_is_400_and_the_server_stays_healthy(
    storing_server: Server, route: str, case: str, body: Any, message: str
) -> None:
    status, answer = storing_server.post(route, body)
    assert status == 400, (case, answer)
    assert message in answer["error"], answer
    assert "Traceback" not in answer["error"]
    status, answer = storing_server.post(route, GOOD[route])
    assert status == 200, answer
    assert len(answer["predictions"] if route == V1 else answer["outputs"][0]["data"]) == 1


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
    storing_server: Server, case: str, path: str, raw: bytes, content_type: str, message: str
) -> None:
    status, answer = storing_server.post(
        path, None, headers={"Content-Type": content_type}, raw=raw
    )
    assert status == 400, (case, answer)
    assert message in answer["error"]
    assert storing_server.post(V1, {"instances": [pixel_array()]})[0] == 200


def test_body_over_the_limit_is_refused_before_it_is_read(storing_server: Server) -> None:
    import socket

    host, port = storing_server.url.removeprefix("http://").split(":")
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
    assert storing_server.post(V1, {"instances": [pixel_array()]})[0] == 200
