"""Registers Flywheel's timetables with Airflow (the plugin loader imports this file).

Custom timetables must be registered so the dag-processor can serialize DAGs that use them and
the scheduler can read them back. Only this file is loaded as a plugin: ``.airflowignore``
keeps the ``flywheel_airflow`` package out of the loader (it would shadow real packages).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from flywheel_airflow.timetables.nightly import NightlySchedule


class FlywheelTimetables(AirflowPlugin):
    name = "flywheel_timetables"
    timetables = [NightlySchedule]  # noqa: RUF012 (Airflow reads the class attribute)
