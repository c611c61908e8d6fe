"""Helpers for servers started on this machine (tests, benchmarks, the demo, the local stack).

Standard library only, so the orchestrator environment can use it too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never assume a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Wait until ``url`` answers below 500; fail early when ``alive()`` says the server died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for {url} exited before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s: {last}")


def stop_process_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
