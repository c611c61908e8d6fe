"""A model trained and registered in the test, and the real model server run on it.

The model comes from MLflow as in production: trained with ``ml_tasks.model.training.fit`` on
the real 8x8 digits, logged with ``mlflow.pytorch`` the way the train step logs it (pickle format,
classes and image size in the metadata), registered as ``digits`` with the alias
``champion`` in a SQLite store; the server subprocess loads ``models:/digits@champion``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.servers import REPO, free_port, s3_client, steps_python
from tools.local_servers import running_server

MODEL_NAME = "digits"


@dataclass(frozen=True)
class RegisteredModel:
    tracking_uri: str
    uri: str
    version: str
    classes: list[str]
    test_images: np.ndarray
    """uint8 (N, 8, 8) digits the model did not train on."""


def train_and_register(root: Path, epochs: int = 4) -> RegisteredModel:
    """Fit a small CNN on the digits and register it as ``digits@champion`` under ``root``."""
    from ml_tasks.model.small_champion import register_digits

    champion = register_digits(
        root, MODEL_NAME, "serve-tests", epochs=epochs, channels=8, hidden=32
    )
    return RegisteredModel(
        tracking_uri=champion.tracking_uri,
        uri=f"models:/{MODEL_NAME}@champion",
        version=champion.version,
        classes=champion.data.classes,
        test_images=champion.pixels[champion.data.split == "test"],
    )


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    return train_and_register(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def classifier(registered: RegisteredModel) -> Any:
    """The same registered model, evaluated in this process: what the server must agree with."""
    import mlflow

    from ml_tasks.model.classifier import load_classifier

    mlflow.set_tracking_uri(registered.tracking_uri)
    mlflow.set_registry_uri(registered.tracking_uri)
    return load_classifier(registered.uri)


@pytest.fixture(scope="session")
def trained(mlflow_url: str) -> Any:
    """``tests.serve.champions.Trained``: two models to register under a test's own name."""
    from tests.serve.champions import train_two

    return train_two(mlflow_url)


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    from tests.serve.support import BUCKET

    client = s3_client(s3_endpoint, "test", "test")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def storing_server(
    tmp_path_factory: pytest.TempPathFactory, registered: RegisteredModel, s3: Any, s3_endpoint: str
) -> Iterator[Server]:
    """One server for the session that stores every input in a local S3 endpoint (moto), with
    limits small enough to cross (``support.LIMITS``)."""
    from tests.serve.support import LIMITS, s3_env

    workdir = tmp_path_factory.mktemp("served")
    with model_server(
        workdir, registered, *LIMITS, "--sample-rate", "1.0", env=s3_env(s3_endpoint)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    registered: RegisteredModel,
) -> Iterator[Server]:
    """The test module's own server, storing off, started with the module's ``SERVER_ARGS``."""
    args = getattr(request.module, "SERVER_ARGS", [])
    workdir = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with model_server(workdir, registered, "--sample-rate", "0", *args) as running:
        yield running


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path

    def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST JSON (or ``raw`` bytes); returns status and the decoded JSON answer."""
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample on ``/metrics`` (0 when absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def events(self) -> list[dict[str, Any]]:
        from ml_tasks.core.events import read_events

        return read_events(self.home / "logs" / "events.jsonl")


@contextmanager
def model_server(
    workdir: Path,
    registered: RegisteredModel,
    *args: str,
    env: dict[str, str] | None = None,
    wait_for: str = "/v2/health/ready",
) -> Iterator[Server]:
    """``python -m ml_tasks.serve`` on a free loopback port, stopped (SIGTERM) afterwards.

    The block starts when ``wait_for`` answers below 500 (readiness by default; give
    ``/v2/health/live`` for a server that has no model to serve yet).
    """
    port = free_port()
    home = workdir / "home"
    log_path = workdir / "server.log"
    full_env = {
        **os.environ,
        "FLYWHEEL_HOME": str(home),
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "FLYWHEEL_LAKE_URI": (workdir / "lake").as_uri(),
        **(env or {}),
    }
    full_env.pop("FLYWHEEL_LOG_PATH", None)
    url = f"http://127.0.0.1:{port}"
    with running_server(
        [steps_python(), "-m", "ml_tasks.serve", "--http-port", str(port), *args],
        health_url=url + wait_for,
        log_path=log_path,
        env=full_env,
        cwd=REPO,
    ) as proc:
        try:
            yield Server(url=url, proc=proc, home=home, log=log_path)
        except Exception:
            print(log_path.read_text()[-4000:])  # a failing test shows what the server said
            raise


def wait_until(predicate: Any, timeout: float = 20.0, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = predicate()
    assert value, f"condition not met within {timeout}s"
    return value
