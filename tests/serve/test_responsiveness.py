"""Large images do not stall the server: health answers while they decode, and a request is
refused when its images together hold more pixels than the per-request budget.

A real server (``python -m ml_tasks.serve``, storing off, the default limits: 16,777,216 pixels
per image and per request) on a model trained and registered in the test.
"""

from __future__ import annotations

import base64
import statistics
import threading
import time
import urllib.request

import numpy as np
import pytest

from ml_tasks.data.images import encode_png
from tests.serve.conftest import Server
from tests.serve.support import V1

pytestmark = pytest.mark.slow
PROBES = 20  # health probes taken while the large requests run


def _blank_png(side: int) -> str:
    """A PNG of side x side black pixels: a few kB that decode to ``side**2`` pixels."""
    return base64.b64encode(encode_png(np.zeros((side, side), dtype=np.uint8))).decode()


def _health_ms(server: Server, path: str) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        assert response.status == 200
    return 1000 * (time.perf_counter() - began)


def test_health_answers_within_100_ms_while_large_requests_decode(server: Server) -> None:
    # 16 images of 1000 x 1000 (16 million pixels, within the budget): tens of ms each to decode.
    body = {"instances": [{"b64": _blank_png(1000)}] * 16}
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        # Until the probes are taken: the load lasts as long as the probing, however fast the
        # machine decodes.
        while not stop.is_set():
            statuses.append(server.post(V1, body)[0])

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    latencies: list[float] = []
    try:
        time.sleep(0.3)  # the requests are read and decoding
        while len(latencies) < PROBES:
            for path in ("/v2/health/ready", "/v2/health/live"):
                latencies.append(_health_ms(server, path))
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert len(statuses) >= len(clients) and set(statuses) == {200}, statuses
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    assert p95 <= 100, (
        f"health p95 {p95:.0f} ms (median {statistics.median(ordered):.0f} ms, "
        f"max {ordered[-1]:.0f} ms) over {len(ordered)} probes"
    )


def test_request_over_the_pixel_budget_is_refused_before_decoding(server: Server) -> None:
    # 64 images of 4096 x 4096: each within the per-image limit, 1 billion pixels together
    # (about 15 s of decoding), in a body of about 1 MB.
    body = {"instances": [{"b64": _blank_png(4096)}] * 64}
    began = time.perf_counter()
    status, answer = server.post(V1, body)
    took = time.perf_counter() - began
    assert status == 400, answer
    assert "over the limit of 16777216 per request" in answer["error"]
    assert took < 2.0, f"refused after {took:.1f} s: it was decoded first"
    assert _health_ms(server, "/v2/health/ready") < 1000
