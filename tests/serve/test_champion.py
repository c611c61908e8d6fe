"""The model service follows the champion: alias moves, no champion yet, broken versions, and
MLflow going away, against a real MLflow server and the real server process.

Two models are trained once (1 and 4 epochs, so their answers differ) and registered under a
registered-model name of each test's own; the server (``python -m ml_tasks.serve`` with
``--watch-seconds 1``) serves ``<that name>@champion`` from the MLflow server.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.conftest import RegisteredModel, Server, model_server, wait_until
from tests.servers import free_port, mlflow_server

WATCH_SECONDS = 1.0

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Trained:
    sources: list[str]
    """The logged models' URIs (``models:/m-...``): register them under any name."""
    images: np.ndarray
    """uint8 (N, 8, 8) digits neither model trained on."""


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def trained(mlflow_url: str) -> Trained:
    from mlflow import MlflowClient

    from ml_tasks.train import digits_data, fit_and_register

    use_mlflow(mlflow_url)
    data, pixels = digits_data()
    hp = {"batch_size": 64, "learning_rate": 0.01, "weight_decay": 0.0, "seed": 0}
    sources = []
    for epochs in (1, 4):
        version, _ = fit_and_register(
            data, {**hp, "epochs": epochs, "channels": 8, "hidden": 32}, "digits-trained"
        )
        sources.append(MlflowClient().get_model_version("digits-trained", version).source)
    return Trained(sources=sources, images=pixels[data.split == "test"][:8])


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


def test_moving_the_champion_switches_answers_without_failing_a_request(
    tmp_path: Path, mlflow_url: str, trained: Trained
) -> None:
    name = "digits-move"
    assert register(mlflow_url, trained.sources[0], name) == "1"
    with start(tmp_path, mlflow_url, name) as server:
        clients = Clients(server, name, trained.images)
        try:
            wait_until(lambda: len(clients.answers) >= 30)
            assert register(mlflow_url, trained.sources[1], name, champion=False) == "2"
            from mlflow import MlflowClient

            moved = time.monotonic()
            MlflowClient().set_registered_model_alias(name, "champion", "2")
            wait_until(lambda: "2" in clients.versions(), timeout=60)
            time.sleep(1.0)  # answers after the swap, too
        finally:
            clients.stop()
        assert clients.failed() == []
        swaps = [e for e in server.events() if e["action"] == "model_swapped"]
        assert [(e["from_version"], e["to_version"]) for e in swaps] == [("1", "2")]
        assert metric(server, "flywheel_serve_model_swaps_total", model_name=name) == 1
        assert metric(server, "flywheel_serve_model_version", model_name=name) == 2
    answers = sorted(clients.answers, key=lambda a: a[1])
    first_v2 = next(a for a in answers if a[3]["model_version"] == "2")
    # Within one watch interval plus the time the server took to load and warm v2 up.
    assert first_v2[1] - moved <= WATCH_SECONDS + swaps[0]["load_seconds"] + 2.0
    # Once v2 has answered, a request sent afterwards never reaches v1 again.
    assert {a[3]["model_version"] for a in answers if a[0] > first_v2[1]} == {"2"}
    assert any(a[3]["model_version"] == "1" for a in answers)
    # The first answer from v2 is v2's (and v1 would have answered otherwise).
    v1 = probabilities(mlflow_url, f"models:/{name}/1", trained.images)
    v2 = probabilities(mlflow_url, f"models:/{name}/2", trained.images)
    assert not np.allclose(v1, v2, atol=1e-3)
    np.testing.assert_allclose(served(first_v2[3]), v2, atol=1e-5)


def test_without_a_champion_the_server_is_live_not_ready_then_serves_the_first_one(
    tmp_path: Path, mlflow_url: str, trained: Trained
) -> None:
    name = "digits-new"
    reason = f"no {name}@champion yet in MLflow at {mlflow_url}"
    body = {"instances": (trained.images / 255.0).tolist()}
    with start(tmp_path, mlflow_url, name, wait_for="/v2/health/live") as server:
        assert get(server, "/v2/health/live")[0] == 200
        for path in ("/v2/health/ready", f"/v2/models/{name}/ready", f"/v1/models/{name}"):
            status, answer = get(server, path)
            assert (status, answer.get("ready"), answer.get("reason")) == (503, False, reason)
        status, answer = server.post(f"/v1/models/{name}:predict", body)
        assert (status, answer.get("reason")) == (503, reason), answer
        v2_body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8]}]}
        v2_body["inputs"][0]["data"] = [0.5] * 64
        status, answer = server.post(f"/v2/models/{name}/infer", v2_body)
        assert (status, answer.get("reason")) == (503, reason), answer
        waiting = [e for e in server.events() if e["action"] == "champion_missing"]
        assert len(waiting) == 1 and waiting[0]["reason"] == reason

        assert register(mlflow_url, trained.sources[1], name) == "1"
        wait_until(lambda: get(server, "/v2/health/ready")[0] == 200, timeout=60)
        assert get(server, f"/v2/models/{name}/ready")[0] == 200
        status, answer = server.post(f"/v1/models/{name}:predict", body)
        assert status == 200 and answer["model_version"] == "1", answer
        expected = probabilities(mlflow_url, f"models:/{name}/1", trained.images)
        np.testing.assert_allclose(served(answer), expected, atol=1e-5)
        loaded = [e for e in server.events() if e["action"] == "model_loaded"]
        assert [e["model_version"] for e in loaded] == ["1"]


def test_a_champion_with_broken_artifacts_keeps_the_old_version_serving(
    tmp_path: Path, mlflow_url: str, trained: Trained
) -> None:
    name = "digits-broken"
    assert register(mlflow_url, trained.sources[0], name) == "1"
    files = downloaded(mlflow_url, trained.sources[1], tmp_path / "copy")
    with start(tmp_path, mlflow_url, name) as server:
        clients = Clients(server, name, trained.images, threads=2)
        try:
            broken = register_copy(mlflow_url, files, name, break_weights=True)
            from mlflow import MlflowClient

            MlflowClient().set_registered_model_alias(name, "champion", broken)
            # Reported, and tried again on the next polls.
            wait_until(
                lambda: (
                    metric(server, "flywheel_serve_model_load_failures_total", model_name=name) >= 2
                ),
                timeout=60,
            )
            assert get(server, "/v2/health/ready")[0] == 200
        finally:
            clients.stop()
        assert clients.failed() == []
        assert clients.versions() == {"1"}
        failures = [e for e in server.events() if e["action"] == "model_load_failed"]
        assert failures and failures[0]["model_version"] == broken
        assert failures[0]["serving_version"] == "1" and failures[0]["error"]
        assert not [e for e in server.events() if e["action"] == "model_swapped"]
        assert metric(server, "flywheel_serve_model_version", model_name=name) == 1

        # A good version afterwards is picked up: the failure did not stop the watch.
        fixed = register(mlflow_url, trained.sources[1], name)
        wait_until(
            lambda: (
                server.post(f"/v1/models/{name}:predict", {"instances": [[[0.0] * 8] * 8]})[1].get(
                    "model_version"
                )
                == fixed
            ),
            timeout=60,
        )


def test_mlflow_going_away_does_not_take_the_service_down(
    tmp_path: Path, trained: Trained, mlflow_url: str
) -> None:
    name = "digits-alone"
    files = downloaded(mlflow_url, trained.sources[0], tmp_path / "copy")
    registry: Any = mlflow_server(tmp_path / "mlflow")  # its own: this test stops it
    url = registry.__enter__()
    try:
        version = register_copy(url, files, name, break_weights=False)
        from mlflow import MlflowClient

        MlflowClient().set_registered_model_alias(name, "champion", version)
        with start(tmp_path / "served", url, name) as server:
            registry, stopping = None, registry
            stopping.__exit__(None, None, None)
            wait_until(
                lambda: (
                    metric(server, "flywheel_serve_registry_failures_total", model_name=name) >= 1
                ),
                timeout=60,
            )
            body = {"instances": [[[0.0] * 8] * 8]}
            status, answer = server.post(f"/v1/models/{name}:predict", body)
            assert status == 200 and answer["model_version"] == version
            assert get(server, "/v2/health/ready")[0] == 200
            gone = [e for e in server.events() if e["action"] == "registry_unreachable"]
            assert len(gone) == 1 and gone[0]["serving_version"] == version
    finally:
        if registry is not None:
            registry.__exit__(None, None, None)


def test_only_an_alias_uri_is_watched() -> None:
    from ml_tasks.serving.champion import watched_alias

    assert watched_alias("models:/digits@champion") == ("digits", "champion")
    assert watched_alias("models:/digits/3") is None  # a version is never swapped
    assert watched_alias("runs:/0123/model") is None


def test_the_stack_starts_its_model_service_without_a_champion(
    tmp_path: Path, mlflow_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import stack

    name = "digits-stack"
    home = tmp_path / "home"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    (home / "stack").mkdir(parents=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "FLYWHEEL_MODEL_NAME": name,
        "FLYWHEEL_LAKE_URI": (tmp_path / "lake").as_uri(),
    }
    env.pop("FLYWHEEL_LOG_PATH", None)
    port = free_port()
    try:
        url = stack.start_model_service(env, {}, port)
        assert url == f"http://127.0.0.1:{port}"
        status, answer = get_url(url + "/v2/health/ready")
        assert (status, answer.get("reason")) == (
            503,
            f"no {name}@champion yet in MLflow at {mlflow_url}",
        )
    finally:
        stopped = stack.down()
    assert stopped == ["model-service"]
