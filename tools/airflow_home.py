"""An Airflow of its own: the settings that keep a local Airflow off the user's ``~/airflow``.

Every local Airflow here (the demo, the stack, the tests, the benchmarks) lives in one folder
with its own SQLite database, reads this checkout's DAGs and plugins (training's timetable is a
plugin's) and leaves Airflow's example DAGs out.
"""

from __future__ import annotations

from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[1]


def airflow_home_settings(airflow_home: Path) -> dict[str, str]:
    """``AIRFLOW_*`` settings for an Airflow whose home and database are in ``airflow_home``."""
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(CODE_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(CODE_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
