"""Moving the champion alias swaps the new version in without failing a request; only an
alias URI is watched.

Set-up: :mod:`tests.serve.champions`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.serve import champions
from tests.serve.conftest import wait_until

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
