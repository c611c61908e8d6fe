"""An isolated Airflow home for the plugin tests (no database needed: nothing here runs a DAG).

Set in ``pytest_configure``, before any test imports Airflow (which reads its configuration
once); when the DAG tests run in the same session their conftest has already set one up.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tools.airflow_home import airflow_home_settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
_HOME: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    if "flywheel-" in os.environ.get("AIRFLOW_HOME", ""):
        return
    home = Path(tempfile.mkdtemp(prefix="flywheel-plugins-tests-"))
    _HOME.append(home)
    os.environ.update(
        {
            **airflow_home_settings(home / "airflow"),
            "FLYWHEEL_HOME": str(home / "flywheel"),
        }
    )
    for name in ("FLYWHEEL_BACKEND", "FLYWHEEL_STEPS_IMAGE", "FLYWHEEL_IMAGE_PULL_SECRET"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for home in _HOME:
        shutil.rmtree(home, ignore_errors=True)
