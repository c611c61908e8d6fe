"""A champion that fails to load, or MLflow going away, leaves the serving version serving.

Set-up: :mod:`tests.serve.champions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.serve import champions
from tests.serve.conftest import wait_until
from tests.servers import mlflow_server

pytestmark = pytest.mark.slow


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
