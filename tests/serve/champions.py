"""What the champion-following tests share, against a real MLflow server and the real server.

Two models are trained once per session (1 and 4 epochs, so their answers differ; the
``trained`` fixture) and registered under a registered-model name of each test's own; the
server (``python -m ml_tasks.serve`` with ``--watch-seconds 1``, :func:`start`) serves
``<that name>@champion`` from the MLflow server.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.serve.conftest import RegisteredModel, Server, model_server

WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class Trained:
    url: str
    """The MLflow server they are logged in."""
    sources: list[str]
    """The logged models' URIs (``models:/m-...``): register them under any name."""
    images: np.ndarray
    """uint8 (N, 8, 8) digits neither model trained on."""


def train_two(mlflow_url: str) -> Trained:
    """Two models (1 and 4 epochs, so their answers differ) logged in ``mlflow_url``."""
    from mlflow import MlflowClient

    from ml_tasks.model.small_champion import digits_data, fit_and_register

    use_mlflow(mlflow_url)
    data, pixels = digits_data()
    hp = {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0, "seed": 0}
    sources = []
    for epochs in (1, 4):
        version, _ = fit_and_register(
            data, {**hp, "epochs": epochs, "channels": 8, "hidden": 32}, "digits-trained"
        )
        sources.append(MlflowClient().get_model_version("digits-trained", version).source)
    return Trained(url=mlflow_url, sources=sources, images=pixels[data.split == "test"][:8])


def use_mlflow(url: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)


def register(url: str, source: str, name: str, *, champion: bool = True) -> str:
    """Register ``source`` as the next version of ``name`` (and make it the champion)."""
    import mlflow
    from mlflow import MlflowClient

    use_mlflow(url)
    version = str(mlflow.register_model(source, name).version)
    if champion:
        MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def register_copy(url: str, source_dir: Path, name: str, *, break_weights: bool) -> str:
    """Upload a model's files as a run's artifacts and register them as a version of ``name``;
    with ``break_weights`` its weights file is garbage (the MLmodel file is intact)."""
    import mlflow
    from mlflow import MlflowClient

    use_mlflow(url)
    # A copy is no logged model: MLflow would look the original's id up where it may not exist.
    mlmodel = source_dir / "MLmodel"
    lines = mlmodel.read_text().splitlines(keepends=True)
    mlmodel.write_text("".join(line for line in lines if not line.startswith("model_id:")))
    if break_weights:
        weights = list(source_dir.rglob("*.pth"))
        assert weights, f"no weights file under {source_dir}"
        for path in weights:
            path.write_bytes(b"not a pickle" * 100)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(source_dir), "model")
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    created = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return str(created.version)


def downloaded(url: str, source: str, into: Path) -> Path:
    import mlflow

    use_mlflow(url)
    return Path(mlflow.artifacts.download_artifacts(source, dst_path=str(into)))


def probabilities(url: str, model_uri: str, images: np.ndarray) -> np.ndarray:
    from ml_tasks.model.classifier import load_classifier

    use_mlflow(url)
    result: np.ndarray = load_classifier(model_uri).predict_proba(images / np.float32(255.0))
    return result


def get(server: Server, path: str) -> tuple[int, dict[str, Any]]:
    return get_url(server.url + path)


def get_url(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric(server: Server, name: str, **labels: str) -> float:
    """A labelled sample on ``/metrics`` (0 when absent)."""
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.startswith(name + "{"):
                present = "{" + ",".join(sorted(sample[len(name) + 1 : -1].split(","))) + "}"
                if present == wanted:
                    return float(value)
    return 0.0


def start(workdir: Path, url: str, name: str, *, wait_for: str = "/v2/health/ready") -> Any:
    at = RegisteredModel(tracking_uri=url, uri="", version="", classes=[], test_images=np.empty(0))
    return model_server(
        workdir,
        at,
        "--sample-rate",
        "0",
        "--watch-seconds",
        str(WATCH_SECONDS),
        env={"FLYWHEEL_MODEL_NAME": name},
        wait_for=wait_for,
    )


def serving_version_1(workdir: Path, trained: Trained, name: str) -> Any:
    """Register the first model as version 1 of ``name``, its champion; a server that serves it
    (a context manager, like :func:`start`)."""
    assert register(trained.url, trained.sources[0], name) == "1"
    return start(workdir, trained.url, name)


class Clients:
    """Threads that keep sending the same v1 request; every answer is kept with its times."""

    def __init__(self, server: Server, name: str, images: np.ndarray, threads: int = 3) -> None:
        self.answers: list[tuple[float, float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        body = {"instances": (images / 255.0).tolist()}

        def send() -> None:
            while not self._stop.is_set():
                began = time.monotonic()
                status, answer = server.post(f"/v1/models/{name}:predict", body)
                self.answers.append((began, time.monotonic(), status, answer))

        self._threads = [threading.Thread(target=send) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def versions(self) -> set[str | None]:
        return {answer.get("model_version") for _, _, _, answer in self.answers}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def failed(self) -> list[tuple[int, dict[str, Any]]]:
        return [(status, answer) for _, _, status, answer in self.answers if status != 200]


def served(answer: dict[str, Any]) -> np.ndarray:
    return np.array(
        [[p["probabilities"][str(c)] for c in range(10)] for p in answer["predictions"]]
    )
