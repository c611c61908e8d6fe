"""``python -m ml_tasks.feed``: real digits through a real model server fill ``incoming/`` the
way production traffic does; a service that is not there gets one clear line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ml_tasks.serving.feeding import transformed_digits
from tests.commands import step_result
from tests.serve.conftest import RegisteredModel, model_server, wait_until
from tests.servers import free_port, steps_python

REPO = Path(__file__).resolve().parents[2]


def test_transformed_digits_are_new_images_yet_repeatable() -> None:
    from sklearn.datasets import load_digits

    from ml_tasks.data.images import encode_png

    first = list(transformed_digits(30, seed=1))
    assert first == list(transformed_digits(30, seed=1))
    assert first != list(transformed_digits(30, seed=2))
    originals = {
        encode_png((image * (255.0 / 16.0)).round().astype("uint8"))
        for image in load_digits().images
    }
    assert not originals & {data for _, data in first}, "sent images must be new content"
    assert {label for label, _ in first} <= {str(k) for k in range(10)}


def test_feed_fills_incoming_through_the_model_service(
    tmp_path: Path, registered: RegisteredModel
) -> None:
    with model_server(tmp_path, registered, "--sample-rate", "1.0") as server:
        result = step_result(
            "ml_tasks.feed",
            *("--url", server.url, "--count", "20", "--batch", "6"),
            result_path=tmp_path / "feed.json",
            python=steps_python(),
        )
        assert result["sent"] == result["answered"] == 20
        assert result["model_versions"] == [registered.version]
        # A 4-epoch model on shifted, noisy digits: far better than chance (0.1).
        assert result["live_accuracy"] >= 0.4, result
        incoming = tmp_path / "lake" / "incoming"
        stored = wait_until(lambda: len(list(incoming.rglob("*.png"))) == 20 or None)
        assert stored
        assert len(list(incoming.rglob("*.json"))) == 20


def test_feed_without_a_service_says_how_to_start_one(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [steps_python(), "-m", "ml_tasks.feed", "--url", url, "--count", "3", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "FLYWHEEL_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 3
    assert f"cannot reach the model service at {url}" in done.stderr
    assert "ml_tasks.serve" in done.stderr


def test_the_stack_environment_points_feed_at_the_stack_model_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import typer

    from ml_tasks.feed import app
    from tools import stack

    state = {
        "s3": "http://127.0.0.1:9000",
        "mlflow": "http://127.0.0.1:5000",
        "label_studio": {"url": "http://127.0.0.1:8080", "token": "t"},
        "model_service": "http://127.0.0.1:8085",
    }
    env = stack.stack_env(state)
    assert env["FLYWHEEL_SERVE_URL"] == "http://127.0.0.1:8085"
    monkeypatch.setenv("FLYWHEEL_SERVE_URL", env["FLYWHEEL_SERVE_URL"])
    command = typer.main.get_command(app)
    assert command.make_context("feed", []).params["url"] == "http://127.0.0.1:8085"
    # Started with --no-serve: nothing to point at.
    assert "FLYWHEEL_SERVE_URL" not in stack.stack_env({**state, "model_service": "not requested"})
