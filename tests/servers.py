"""Real servers for the tests, started on 127.0.0.1 at free ports and stopped afterwards.

Used from both environments: the MLflow server runs with the steps environment's
interpreter (``FLYWHEEL_STEPS_PYTHON``), the S3 endpoint is moto's threaded server in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_airflow.invocation import steps_python

from tools.local_servers import free_port, mlflow_command, running_server

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def mlflow_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """An MLflow tracking server (SQLite backend, served artifacts); yields its URL.

    Give the ``port`` of one stopped earlier, with the same ``workdir``, to bring it back.
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with running_server(
        mlflow_command(steps_python(), workdir / "mlflow.db", workdir / "artifacts", port),
        health_url=f"{url}/health",
        log_path=workdir / "mlflow-server.log",
        cwd=workdir,
    ):
        yield url


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


def s3_client(endpoint: str, key: str = "testing", secret: str = "testing") -> Any:
    """A boto3 S3 client for an endpoint on 127.0.0.1 (moto takes any key and secret)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
