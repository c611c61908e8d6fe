"""Shared fixtures: every test gets its own state folder, so nothing touches the user's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def flywheel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty embedded state folder (lake, MLflow store, caches, event log) for one test."""
    home = tmp_path / "flywheel-home"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    for name in (
        "FLYWHEEL_LAKE_URI",
        "MLFLOW_TRACKING_URI",
        "FLYWHEEL_LOG_PATH",
        "FLYWHEEL_ARTIFACT_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    yield home


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow server on 127.0.0.1 for the session (started only where a test asks)."""
    from tests.servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint (moto's server) on 127.0.0.1 for the session."""
    from tests.servers import s3_server

    with s3_server() as endpoint:
        yield endpoint
