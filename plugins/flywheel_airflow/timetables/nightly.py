"""A cron schedule that never starts a slot that passed while nobody was asking for it.

With ``catchup=False`` Airflow's ``CronTriggerTimetable`` schedules the most recent past slot
as soon as a DAG is unpaused: a new user who ticks "Unpause on trigger" in the trigger form gets
a nightly training run they did not ask for, and (``max_active_runs=1``) their own run waits
behind it. :class:`NightlySchedule` keeps every slot from the moment the DAG is unpaused on and
skips the ones that passed before: a DAG that never ran on schedule starts at the next slot,
and after a run the next slot is kept only if it is at most ``grace`` late (a busy scheduler),
not after a pause. Backfills (``catchup`` or ``airflow backfill create``) are unaffected.

A custom timetable must be registered with Airflow through a plugin: ``plugins/
flywheel_timetables.py`` does it, so the scheduler and the dag-processor can (de)serialize it.
"""

from __future__ import annotations

import datetime
from typing import Any

from airflow._shared.timezones.timezone import coerce_datetime, parse_timezone, utcnow
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable

DEFAULT_GRACE = datetime.timedelta(minutes=10)


class NightlySchedule(CronTriggerTimetable):
    """``CronTriggerTimetable`` without the catch-up of a slot that passed before unpausing."""

    description = "cron; a slot missed while paused is skipped, not run late"

    def __init__(
        self, cron: str, *, timezone: Any, grace: datetime.timedelta = DEFAULT_GRACE
    ) -> None:
        super().__init__(cron, timezone=timezone)
        self.grace = grace

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> NightlySchedule:
        return cls(
            data["expression"],
            timezone=parse_timezone(data["timezone"]),
            grace=datetime.timedelta(seconds=float(data["grace_seconds"])),
        )

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "grace_seconds": self.grace.total_seconds()}

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        info = super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=restriction
        )
        if info is None or restriction.catchup:
            return info
        now = coerce_datetime(utcnow())
        if info.run_after >= now:
            return info
        if (
            last_automated_data_interval is not None
            and info.run_after == self._get_next(last_automated_data_interval.end)
            and now - info.run_after <= self.grace
        ):
            return info  # the slot after the last run, a little late: the scheduler was busy
        upcoming = self._align_to_next(now)
        if restriction.latest is not None and restriction.latest < upcoming:
            return None
        return DagRunInfo.interval(coerce_datetime(upcoming - self._interval), upcoming)
