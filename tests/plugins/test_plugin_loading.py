"""Airflow's plugin loader must not shadow real packages with Flywheel's modules.

The loader imports every ``.py`` under the plugins folder as a top-level module named after
the file, so ``flywheel_airflow/backends/kubernetes.py`` would become ``sys.modules
["kubernetes"]`` and break the Kubernetes client for every task in the worker.
``plugins/.airflowignore`` keeps the package out of the loader (it defines no AirflowPlugin).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
import kubernetes.client  # the real package, not flywheel_airflow/backends/kubernetes.py
from flywheel_airflow.backends.kubernetes import build_step_pod  # noqa: F401
shadowed = [m for m in ("kubernetes", "step", "demo", "gates") if m in sys.modules
            and "flywheel_airflow" in str(getattr(sys.modules[m], "__file__", ""))]
print("shadowed:", shadowed)
"""


def test_loading_plugins_shadows_no_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shadowed: []" in done.stdout
