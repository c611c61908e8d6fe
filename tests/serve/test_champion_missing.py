"""Without a champion yet the service is live, not ready, and says why; it serves the first
one registered (the stack's model service starts that way too).

Set-up: :mod:`tests.serve.champions`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.serve import champions
from tests.serve.conftest import wait_until
from tests.servers import free_port

pytestmark = pytest.mark.slow


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
