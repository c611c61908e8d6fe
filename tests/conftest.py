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
