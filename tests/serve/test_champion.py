"""The service follows the ``champion`` alias: moving it swaps the new version in without failing
a request (only an alias URI is watched); with no champion yet the service is live, not ready,
and says why, then serves the first one registered; a champion that fails to load, or MLflow
going away, leaves the serving version serving.

Set-up: :mod:`tests.serve.champions`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve import champions
from tests.serve.conftest import wait_until
from tests.servers import free_port, mlflow_server

pytestmark = pytest.mark.slow


def test_moving_the_champion_switches_answers_without_failing_a_request(
    tmp_path: Path, trained: champions.Trained
) -> None:
    name = "digits-move"
    with champions.serving_version_1(tmp_path, trained, name) as server:
        clients = champions.Clients(server, name, trained.images)
        try:
            wait_until(lambda: len(clients.answers) >= 30)
            assert champions.register(trained.url, trained.sources[1], name, champion=False) == "2"
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
        assert champions.metric(server, "flywheel_serve_model_swaps_total", model_name=name) == 1
        assert champions.metric(server, "flywheel_serve_model_version", model_name=name) == 2
    answers = sorted(clients.answers, key=lambda a: a[1])
    first_v2 = next(a for a in answers if a[3]["model_version"] == "2")
    # Within one watch interval plus the time the server took to load and warm v2 up.
    assert first_v2[1] - moved <= champions.WATCH_SECONDS + swaps[0]["load_seconds"] + 2.0
    # Once v2 has answered, a request sent afterwards never reaches v1 again.
    assert {a[3]["model_version"] for a in answers if a[0] > first_v2[1]} == {"2"}
    assert any(a[3]["model_version"] == "1" for a in answers)
    # The first answer from v2 is v2's (and v1 would have answered otherwise).
    v1 = champions.probabilities(trained.url, f"models:/{name}/1", trained.images)
    v2 = champions.probabilities(trained.url, f"models:/{name}/2", trained.images)
    assert not np.allclose(v1, v2, atol=1e-3)
    np.testing.assert_allclose(champions.served(first_v2[3]), v2, atol=1e-5)


def test_only_an_alias_uri_is_watched() -> None:
    from ml_tasks.serving.champion import watched_alias

    assert watched_alias("models:/digits@champion") == ("digits", "champion")
    assert watched_alias("models:/digits/3") is None  # a version is never swapped
    assert watched_alias("runs:/0123/model") is None


def test_without_a_champion_the_server_is_live_not_ready_then_serves_the_first_one(
    tmp_path: Path, trained: champions.Trained
) -> None:
    name = "digits-new"
    reason = f"no {name}@champion yet in MLflow at {trained.url}"
    body = {"instances": (trained.images / 255.0).tolist()}
    with champions.start(tmp_path, trained.url, name, wait_for="/v2/health/live") as server:
        assert champions.get(server, "/v2/health/live")[0] == 200
        for path in ("/v2/health/ready", f"/v2/models/{name}/ready", f"/v1/models/{name}"):
            status, answer = champions.get(server, path)
            assert (status, answer.get("ready"), answer.get("reason")) == (503, False, reason)
        status, answer = server.post(f"/v1/models/{name}:predict", body)
        assert (status, answer.get("reason")) == (503, reason), answer
        v2_body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8]}]}
        v2_body["inputs"][0]["data"] = [0.5] * 64
        status, answer = server.post(f"/v2/models/{name}/infer", v2_body)
        assert (status, answer.get("reason")) == (503, reason), answer
        waiting = [e for e in server.events() if e["action"] == "champion_missing"]
        assert len(waiting) == 1 and waiting[0]["reason"] == reason

        assert champions.register(trained.url, trained.sources[1], name) == "1"
        wait_until(lambda: champions.get(server, "/v2/health/ready")[0] == 200, timeout=60)
        assert champions.get(server, f"/v2/models/{name}/ready")[0] == 200
        status, answer = server.post(f"/v1/models/{name}:predict", body)
        assert status == 200 and answer["model_version"] == "1", answer
        expected = champions.probabilities(trained.url, f"models:/{name}/1", trained.images)
        np.testing.assert_allclose(champions.served(answer), expected, atol=1e-5)
        loaded = [e for e in server.events() if e["action"] == "model_loaded"]
        assert [e["model_version"] for e in loaded] == ["1"]


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
        status, answer = champions.get_url(url + "/v2/health/ready")
        assert (status, answer.get("reason")) == (
            503,
            f"no {name}@champion yet in MLflow at {mlflow_url}",
        )
    finally:
        stopped = stack.down()
    assert stopped == ["model-service"]


def test_a_champion_with_broken_artifacts_keeps_the_old_version_serving(
    tmp_path: Path, trained: champions.Trained
) -> None:
    name = "digits-broken"
    files = champions.downloaded(trained.url, trained.sources[1], tmp_path / "copy")
    with champions.serving_version_1(tmp_path, trained, name) as server:
        clients = champions.Clients(server, name, trained.images, threads=2)
        try:
            broken = champions.register_copy(trained.url, files, name, break_weights=True)
            from mlflow import MlflowClient

            MlflowClient().set_registered_model_alias(name, "champion", broken)
            # Reported, and tried again on the next polls.
            wait_until(
                lambda: (
                    champions.metric(
                        server, "flywheel_serve_model_load_failures_total", model_name=name
                    )
                    >= 2
                ),
                timeout=60,
            )
            assert champions.get(server, "/v2/health/ready")[0] == 200
        finally:
            clients.stop()
        assert clients.failed() == []
        assert clients.versions() == {"1"}
        failures = [e for e in server.events() if e["action"] == "model_load_failed"]
        assert failures and failures[0]["model_version"] == broken
        assert failures[0]["serving_version"] == "1" and failures[0]["error"]
        assert not [e for e in server.events() if e["action"] == "model_swapped"]
        assert champions.metric(server, "flywheel_serve_model_version", model_name=name) == 1

        # A good version afterwards is picked up: the failure did not stop the watch.
        fixed = champions.register(trained.url, trained.sources[1], name)
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
    tmp_path: Path, trained: champions.Trained
) -> None:
    name = "digits-alone"
    files = champions.downloaded(trained.url, trained.sources[0], tmp_path / "copy")
    registry: Any = mlflow_server(tmp_path / "mlflow")  # its own: this test stops it
    url = registry.__enter__()
    try:
        version = champions.register_copy(url, files, name, break_weights=False)
        from mlflow import MlflowClient

        MlflowClient().set_registered_model_alias(name, "champion", version)
        with champions.start(tmp_path / "served", url, name) as server:
            registry, stopping = None, registry
            stopping.__exit__(None, None, None)
            wait_until(
                lambda: (
                    champions.metric(
                        server, "flywheel_serve_registry_failures_total", model_name=name
                    )
                    >= 1
                ),
                timeout=60,
            )
            body = {"instances": [[[0.0] * 8] * 8]}
            status, answer = server.post(f"/v1/models/{name}:predict", body)
            assert status == 200 and answer["model_version"] == version
            assert champions.get(server, "/v2/health/ready")[0] == 200
            gone = [e for e in server.events() if e["action"] == "registry_unreachable"]
            assert len(gone) == 1 and gone[0]["serving_version"] == version
    finally:
        if registry is not None:
            registry.__exit__(None, None, None)
