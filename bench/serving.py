"""The model service against ``mlflow models serve``: throughput and latency, in one run.

Trains a small digits CNN, registers it in a throw-away MLflow store, and serves the same
``models:/bench-digits@champion`` three ways on free loopback ports: ``python -m
ml_tasks.serve`` with storing off (``--sample-rate 0``), the same with every input stored
(``--sample-rate 1``, a ``file://`` lake in a temporary folder), and ``mlflow models serve
--env-manager local``. One client drives them all: a keep-alive HTTP/1.1 client on asyncio
(one connection per concurrent caller, the request bytes prepared up front, so the client
costs little of the two cores), a bounded number of requests per measurement.

The same 64 test digits go to both servers as pixel arrays, each server in its own protocol
(KServe v1 ``{"instances": [8x8]}``, MLflow ``{"inputs": (1, 1, 8, 8)}``), one image per
request, at concurrency 1 and 16. The p99 target is measured on the realistic request, a
base64 PNG; the cost of storing on PNG requests at concurrency 16, storing on against off.
Last, the health check's latency while 4 requests of 16 large PNGs each (1000 x 1000, within
the default per-request pixel budget) decode: the event loop must stay free for it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.table import Row, report, row
from tools.local_servers import free_port, running_server

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-digits"
WARMUP = 200
SEQUENTIAL = 1500
CONCURRENT = 4000
CONCURRENCY = 16


def register_model(root: Path) -> tuple[str, np.ndarray]:
    """Train and register the model; returns the tracking URI and uint8 test digits."""
    from ml_tasks.model.small_champion import register_digits

    champion = register_digits(root, MODEL, "bench", epochs=3, channels=16, hidden=64)
    return champion.tracking_uri, champion.pixels[champion.data.split == "test"][:64]


@contextmanager
def _server(command: list[str], env: dict[str, str], health: str, log: Path) -> Iterator[int]:
    """A server subprocess on a free loopback port (``{port}`` in ``command``); yields the port."""
    port = free_port()
    with running_server(
        [c.replace("{port}", str(port)) for c in command],
        health_url=f"http://127.0.0.1:{port}{health}",
        log_path=log,
        timeout=180,
        env=env,
        cwd=REPO,
    ):
        yield port


def _request(port: int, path: str, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _caller(
    port: int, requests: list[bytes], count: int, start: int, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(count):
            began = time.perf_counter()
            writer.write(requests[(start + i) % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            lowered = {k.strip().lower(): v.strip() for k, v in headers.items()}
            if b"content-length" in lowered:
                body = await reader.readexactly(int(lowered[b"content-length"]))
            else:  # chunked
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    parts.append(await reader.readexactly(size + 2))
                await reader.readuntil(b"\r\n")
                body = b"".join(parts)
            latencies.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    finally:
        writer.close()


def _drive(
    port: int, requests: list[bytes], concurrency: int, count: int
) -> tuple[float, list[float]]:
    """Send ``count`` requests over ``concurrency`` connections; seconds and latencies."""

    async def drive() -> tuple[float, list[float]]:
        latencies: list[float] = []
        share = count // concurrency
        began = time.perf_counter()
        await asyncio.gather(
            *(_caller(port, requests, share, i * share, latencies) for i in range(concurrency))
        )
        return time.perf_counter() - began, latencies

    return asyncio.run(drive())


def compare(
    targets: dict[str, tuple[int, list[bytes]]], concurrency: int, total: int, rounds: int = 4
) -> dict[str, dict[str, float]]:
    """Requests per second and p50/p99 latency (ms) of each target, ``total`` requests each.

    The targets take turns in ``rounds`` short runs (after a warm-up each), so a change in the
    machine's other load during the measurement falls on all of them alike.
    """
    for port, requests in targets.values():
        _drive(port, requests, concurrency, WARMUP)
    seconds = dict.fromkeys(targets, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (port, requests) in targets.items():
            took, measured = _drive(port, requests, concurrency, total // rounds)
            seconds[name] += took
            latencies[name] += measured
    result = {}
    for name in targets:
        ordered = sorted(latencies[name])
        result[name] = {
            "rps": len(ordered) / seconds[name],
            "p50": 1000 * statistics.median(ordered),
            "p99": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        }
    return result


def health_while_decoding(port: int, path: str, body: Any, callers: int = 4) -> list[float]:
    """Health-check latencies (ms) while ``callers`` clients each send ``body`` 3 times."""
    large = _request(port, path, body)
    health = f"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def measure() -> list[float]:
        load = [asyncio.create_task(_caller(port, [large], 3, 0, [])) for _ in range(callers)]
        await asyncio.sleep(0.3)  # the large requests are in and decoding
        latencies: list[float] = []
        while not all(task.done() for task in load):
            await _caller(port, [health], 1, 0, latencies)
            await asyncio.sleep(0.01)
        await asyncio.gather(*load)  # a failed large request fails the measurement
        return [1000 * seconds for seconds in latencies]

    return asyncio.run(measure())


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def run() -> list[Row]:
    from ml_tasks.data.images import encode_png

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        tracking_uri, digits = register_model(root)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "FLYWHEEL_HOME": str(root),
            "FLYWHEEL_MODEL_NAME": MODEL,
            # mlflow models serve runs `uvicorn` from PATH: this interpreter's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        python = sys.executable
        uri = f"models:/{MODEL}@champion"
        ours = [python, "-m", "ml_tasks.serve", "--model-uri", uri, "--http-port", "{port}"]
        off = stack.enter_context(
            _server([*ours, "--sample-rate", "0"], env, "/v2/health/ready", root / "off.log")
        )
        on = stack.enter_context(
            _server(
                [*ours, "--sample-rate", "1", "--lake-uri", (root / "lake").as_uri()],
                env,
                "/v2/health/ready",
                root / "on.log",
            )
        )
        baseline = stack.enter_context(
            _server(
                [
                    python,
                    "-m",
                    "mlflow",
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "{port}",
                ],
                env,
                "/ping",
                root / "mlflow.log",
            )
        )

        pixels = digits / 255.0
        v1_path = f"/v1/models/{MODEL}:predict"
        ours_pixels = [_request(off, v1_path, {"instances": [p.tolist()]}) for p in pixels]
        mlflow_pixels = [
            _request(baseline, "/invocations", {"inputs": p[None, None].tolist()}) for p in pixels
        ]
        pngs = [{"instances": [{"b64": base64.b64encode(encode_png(d)).decode()}]} for d in digits]

        for concurrency, total in ((1, SEQUENTIAL), (CONCURRENCY, CONCURRENT)):
            result = compare(
                {"ours": (off, ours_pixels), "mlflow": (baseline, mlflow_pixels)},
                concurrency,
                total,
            )
            mine, theirs = result["ours"], result["mlflow"]
            name = f"serving c={concurrency}"
            target = ">= 2x mlflow" if concurrency == CONCURRENCY else "-"
            ok = mine["rps"] >= 2 * theirs["rps"] if concurrency == CONCURRENCY else None
            rows.append(
                row(name, "req/s vs mlflow serve (pixels)", mine["rps"], theirs["rps"], target, ok)
            )
            for q in ("p50", "p99"):
                rows.append(
                    row(name, f"{q} ms vs mlflow serve (pixels)", mine[q], theirs[q], "-", None)
                )

        png = compare({"ours": (off, [_request(off, v1_path, p) for p in pngs])}, 1, SEQUENTIAL)
        png_sequential = png["ours"]
        rows.append(
            row(
                "serving c=1",
                "p99 ms, one base64 PNG",
                png_sequential["p99"],
                None,
                "<= 10 ms",
                png_sequential["p99"] <= 10.0,
            )
        )
        rows.append(
            row("serving c=1", "p50 ms, one base64 PNG", png_sequential["p50"], None, "-", None)
        )

        # Storing every input against storing none: the same server, the same PNG requests.
        storing = compare(
            {
                "on": (on, [_request(on, v1_path, p) for p in pngs]),
                "off": (off, [_request(off, v1_path, p) for p in pngs]),
            },
            CONCURRENCY,
            CONCURRENT,
        )
        with_store, without = storing["on"]["rps"], storing["off"]["rps"]
        rows.append(
            row(
                f"serving c={CONCURRENCY}",
                "req/s storing every PNG vs not",
                with_store,
                without,
                ">= 0.9x",
                with_store >= 0.9 * without,
            )
        )
        stored = _metric(on, "flywheel_incoming_stored_total")
        dropped = _metric(on, "flywheel_incoming_dropped_total")
        rows.append(
            row(
                f"serving c={CONCURRENCY}",
                "images stored (dropped: baseline)",
                stored,
                dropped or None,
                "-",
                None,
            )
        )
        blank = base64.b64encode(encode_png(np.zeros((1000, 1000), dtype=np.uint8))).decode()
        probes = sorted(health_while_decoding(off, v1_path, {"instances": [{"b64": blank}] * 16}))
        p99 = probes[int(0.99 * (len(probes) - 1))]
        rows.append(
            row(
                "serving",
                f"health p99 ms, 4 large-image requests in flight ({len(probes)} probes)",
                p99,
                None,
                "<= 100 ms",
                p99 <= 100.0,
            )
        )
    # Other work on the machine shows in every figure above: say how busy it was.
    rows.append(
        row("serving", "load average during the run (2 cores)", os.getloadavg()[0], None, "-", None)
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    return report(run(), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
