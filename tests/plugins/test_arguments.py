"""The template macros that turn run values into step arguments (no argument: ``""``)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from flywheel_airflow.arguments import backfill_date, option, study_name, switch

WHEN = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (3, "--x=3"),
        (0, "--x=0"),  # an unset param is None; zero is a value
        (0.001, "--x=0.001"),
        ("abc123", "--x=abc123"),
        (WHEN, "--x=2026-03-04T02:00:00+00:00"),
    ],
)
def test_option_writes_a_value_or_nothing(value: object, expected: str) -> None:
    assert option("--x", value) == expected


@pytest.mark.parametrize(("on", "expected"), [(True, "--x"), (False, ""), (None, "")])
def test_switch(on: object, expected: str) -> None:
    assert switch("--x", on) == expected


@pytest.mark.parametrize(
    ("run_type", "run_id", "expected"),
    [
        ("backfill", "backfill__2026-03-04T02:00:00+00:00", WHEN),
        ("scheduled", "backfill__2026-03-04T02:00:00+00:00", WHEN),  # the run id says so
        ("scheduled", "scheduled__2026-03-04T02:00:00+00:00", None),
        ("manual", "manual__2026-03-04T02:00:00+00:00", None),
    ],
)
def test_backfill_date_only_for_backfills(
    run_type: str, run_id: str, expected: datetime | None
) -> None:
    run = SimpleNamespace(run_type=run_type, run_id=run_id, logical_date=WHEN)
    assert backfill_date(run) == expected


def test_study_name_drops_timestamp_punctuation() -> None:
    assert study_name("manual__2026-03-04T02:00:00.123+00:00") == (
        "tuning-manual__2026-03-04T020000.1230000"
    )
