"""Helpers for servers started on this machine (tests, benchmarks, the demo, the local stack).

Standard library only, so the orchestrator environment can use it too.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never assume a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float, what: str, *, every: float = 1.0) -> T:
    """Call ``check`` every ``every`` seconds until it returns something truthy, and return that;
    TimeoutError naming ``what`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def answered(response: http.client.HTTPResponse) -> bool:
    """The default readiness test: any answer below 500."""
    return response.status < 500


def wait_for_http(
    url: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    *,
    ready: Callable[[http.client.HTTPResponse], bool] = answered,
    every: float = 0.3,
    request_timeout: float = 2,
) -> None:
    """Wait until ``url`` answers and ``ready(response)`` holds (default: a status below 500).

    Raises RuntimeError as soon as ``alive()`` says the server died, TimeoutError (with the last
    error seen) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for {url} exited before answering")
        try:
            with urllib.request.urlopen(url, timeout=request_timeout) as response:
                if ready(response):
                    return
                last = f"not ready (HTTP {response.status})"
        except OSError as exc:
            last = exc
        time.sleep(every)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s: {last}")


def mlflow_command(python: str, database: Path, artifacts: Path, port: int) -> list[str]:
    """MLflow's tracking server on ``127.0.0.1:port``, one worker: runs in SQLite ``database``,
    artifacts served from the ``artifacts`` folder (clients need no access to it)."""
    return [
        python,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{database}",
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def stop_process_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 20
) -> None:
    """Stop one process: SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_server(
    command: Sequence[str],
    *,
    health_url: str,
    log_path: Path,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, ready when the block starts and stopped (with its children) after it.

    It runs in a session of its own with its output in ``log_path``; "ready" means
    ``health_url`` answers. When it exits or stays silent instead, the error carries the end
    of its log: the reason is almost always there.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(command),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                wait_for_http(health_url, timeout, alive=lambda: proc.poll() is None)
            except (RuntimeError, TimeoutError) as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                name = " ".join(Path(part).name for part in command[:3])
                raise RuntimeError(f"{name}: {exc}; the end of {log_path}:\n{tail}") from exc
            yield proc
        finally:
            stop_process_group(proc)
