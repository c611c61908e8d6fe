"""Real servers for the tests, started on 127.0.0.1 at free ports and stopped afterwards.

Used from both environments: the MLflow server runs with the steps environment's
interpreter (``FLYWHEEL_STEPS_PYTHON``), the S3 endpoint is moto's threaded server in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ml_tasks.local_servers import free_port, stop_process_group
from ml_tasks.local_servers import wait_for_http as shared_wait

REPO = Path(__file__).resolve().parents[1]


def steps_python() -> str:
    env = os.environ.get("FLYWHEEL_STEPS_PYTHON")
    if env:
        return env
    candidate = REPO / ".venvs" / "steps" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    shared_wait(url, timeout, alive=None if proc is None else lambda: proc.poll() is None)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and everything it spawned (it runs in its own process group)."""
    stop_process_group(proc)


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """An MLflow tracking server (SQLite backend, served artifacts); yields its URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [
            steps_python(),
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(workdir / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=120, proc=proc)
        yield url
    finally:
        stop(proc)
        log.close()


@contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 endpoint in this process; yields its URL. Data lives in memory."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
