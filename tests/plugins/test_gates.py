"""The training DAG's gates: where a run goes after validate, who may approve, what they see."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flywheel_airflow.gates import approval_timeout, is_backfill, route_after_validation
from flywheel_airflow.operators.approval import approval_body, parse_approvers

REGISTERED = {
    "registered": True,
    "model_version": "4",
    "reason": "beats champion v3",
    "model_name": "digits",
    "mlflow_run_id": "a" * 32,
    "dataset_version": "f" * 32,
    "new": {"accuracy": 0.95, "macro_f1": 0.94},
    "incumbent": {
        "alias": "champion",
        "version": "3",
        "run_id": "b" * 32,
        "accuracy": 0.93,
        "macro_f1": 0.92,
    },
}


@pytest.mark.parametrize(
    ("run_type", "run_id", "expected"),
    [
        ("backfill", "backfill__2026-03-01T00:00:00+00:00", True),
        ("manual", "backfill__2026-03-01T00:00:00+00:00", True),
        ("backfill_job", "x", False),
        ("manual", "manual__2026-03-01", False),
        ("scheduled", "scheduled__2026-03-01", False),
        ("asset_triggered", "asset_triggered__2026-03-01", False),
    ],
)
def test_is_backfill(run_type: str, run_id: str, expected: bool) -> None:
    assert is_backfill(SimpleNamespace(run_type=run_type, run_id=run_id)) is expected


def test_is_backfill_reads_the_run_type_enum() -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType

    assert is_backfill(SimpleNamespace(run_type=DagRunType.BACKFILL, run_id="x")) is True
    assert is_backfill(SimpleNamespace(run_type=DagRunType.MANUAL, run_id="x")) is False


def test_routes_after_validation() -> None:
    assert route_after_validation(REGISTERED, backfill=False)[0] == "await_approval"
    for verdict in ("register", "skip"):  # a backfill evaluates only, better or not
        route, reason = route_after_validation(
            {"decision": verdict, "registered": False, "reason": "evaluation only"}, backfill=True
        )
        assert route == "backfill_keeps_champion" and "nothing registered" in reason
        assert ("not better" in reason) is (verdict == "skip")
    route, reason = route_after_validation(
        {"registered": False, "reason": "accuracy 0.9 does not beat champion v3"}, backfill=False
    )
    assert route == "registration_skipped" and "does not beat champion v3" in reason


def test_approval_body_compares_both_models_with_links() -> None:
    body = approval_body(REGISTERED, "http://mlflow.example")
    assert "| accuracy | 0.9500 | 0.9300 |" in body
    assert "| macro F1 | 0.9400 | 0.9200 |" in body
    assert f"http://mlflow.example/#/runs/{'a' * 32}" in body
    assert f"http://mlflow.example/#/runs/{'b' * 32}" in body
    assert "champion v3" in body and "digits v4" in body
    first = approval_body({**REGISTERED, "incumbent": None}, None)
    assert "no champion yet" in first and "`" + "a" * 32 + "`" in first


def test_parse_approvers() -> None:
    assert parse_approvers("alice:Alice Doe, bob;") == [
        {"id": "alice", "name": "Alice Doe"},
        {"id": "bob", "name": "bob"},
    ]
    assert parse_approvers("") == []


def test_no_answer_in_time_is_recorded_as_a_timeout_reject() -> None:
    """The scheduler's timeout sweep resumes the gate with the defaults and no responder."""
    import contextlib
    from datetime import UTC, datetime
    from unittest import mock

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import DownstreamTasksSkipped
    from flywheel_airflow.operators.approval import ApprovalGate

    with DAG("gate_test", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        gate = ApprovalGate(
            task_id="await_approval",
            decision_task_id="validate",
            approve_task_id="deploy",
            reject_task_id="record_rejection",
            approvers=[{"id": "alice", "name": "Alice"}],
        )
        gate >> [EmptyOperator(task_id="deploy"), EmptyOperator(task_id="record_rejection")]
    assert gate.defaults == ["Reject"]
    pushed: dict[str, object] = {}
    ti = mock.Mock(task_id="await_approval", task=gate)
    ti.xcom_pull.return_value = REGISTERED
    ti.xcom_push.side_effect = lambda key, value: pushed.__setitem__(key, value)
    context = {
        "ti": ti,
        "task_instance": ti,
        "task": gate,
        "dag_run": mock.Mock(dag_id="gate_test", run_id="manual__1"),
    }
    event = {
        "chosen_options": ["Reject"],
        "params_input": {},
        "timedout": True,
        "responded_at": datetime(2026, 1, 2, tzinfo=UTC),
        "responded_by_user": None,
    }
    # Airflow 3 skips the deploy branch by raising.
    with (
        mock.patch("ml_tasks.core.events.emit") as emit,
        contextlib.suppress(DownstreamTasksSkipped),
    ):
        gate.execute_complete(context, event)
    assert pushed["decision"] == {
        "choice": "Reject",
        "approved": False,
        "who": "timeout",
        "timed_out": True,
        "model_version": "4",
    }
    assert emit.call_args.kwargs["decision"] == "reject"
    assert emit.call_args.kwargs["who"] == "timeout"


def test_approval_timeout_is_a_day_unless_set_and_refuses_nonsense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import timedelta

    monkeypatch.delenv("FLYWHEEL_APPROVAL_TIMEOUT", raising=False)
    assert approval_timeout() == timedelta(hours=24)
    monkeypatch.setenv("FLYWHEEL_APPROVAL_TIMEOUT", "90")
    assert approval_timeout() == timedelta(seconds=90)
    for bad in ("0", "-5", "a day"):
        monkeypatch.setenv("FLYWHEEL_APPROVAL_TIMEOUT", bad)
        with pytest.raises(ValueError, match="FLYWHEEL_APPROVAL_TIMEOUT"):
            approval_timeout()


class FakeTi:
    """What the approval's two downstream tasks read: XComs by task and key."""

    def __init__(self, decision: dict[str, object] | None) -> None:
        self.decision = decision

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> object:
        if (task_ids, key) == ("await_approval", "decision"):
            return self.decision
        if task_ids == "validate":
            return {"model_version": "7"}
        return None


def test_a_decision_less_approval_deploys_nothing_and_says_why(
    flywheel_home: object,
) -> None:
    from airflow.sdk.exceptions import AirflowSkipException
    from flywheel_airflow.gates import approval_responder, rejection_reason

    # The approval task marked success by hand: no decision in XCom. Both tasks after it skip
    # (no retries, nothing deployed, nothing recorded as a person's answer).
    with pytest.raises(AirflowSkipException, match=r"without a decision.*stays challenger"):
        approval_responder(FakeTi(None), approved=True)
    with pytest.raises(AirflowSkipException, match="without a decision"):
        rejection_reason(FakeTi(None))


def test_each_side_of_the_approval_takes_only_its_own_answer() -> None:
    from airflow.sdk.exceptions import AirflowSkipException
    from flywheel_airflow.gates import approval_responder, rejection_reason

    approved = {"choice": "Approve", "approved": True, "who": "ada", "timed_out": False}
    rejected = {"choice": "Reject", "approved": False, "who": "timeout", "timed_out": True}
    assert approval_responder(FakeTi(approved), approved=True) == "ada"
    assert approval_responder(FakeTi(rejected), approved=False) == "timeout"
    assert rejection_reason(FakeTi(rejected)) == "no answer before the approval timed out"
    with pytest.raises(AirflowSkipException, match="'Approve' by ada"):
        approval_responder(FakeTi(approved), approved=False)
    with pytest.raises(AirflowSkipException, match="'Reject'"):
        approval_responder(FakeTi(rejected), approved=True)


def test_approval_body_flags_a_forced_challenger_worse_than_the_champion() -> None:
    forced = {
        **REGISTERED,
        "reason": "registration forced by the caller (floors passed)",
        "new": {"accuracy": 0.90, "macro_f1": 0.94},
    }
    body = approval_body(forced, None)
    assert "worse than champion v3** on accuracy:" in body
    assert "worse than" not in approval_body(REGISTERED, None)


def test_approval_body_says_who_may_answer() -> None:
    users = parse_approvers("ada:Ada Lovelace, bob")
    body = approval_body(REGISTERED, None, users)
    assert "Only Ada Lovelace (`ada`), bob (`bob`) may answer" in body


def test_unpausing_does_not_run_the_slot_that_passed() -> None:
    import datetime

    from airflow._shared.timezones.timezone import coerce_datetime, utcnow
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable
    from flywheel_airflow.timetables.nightly import NightlySchedule

    start = coerce_datetime(datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=datetime.UTC))
    fresh = TimeRestriction(earliest=start, latest=None, catchup=False)
    now = utcnow()
    # Every minute: the last slot has always just passed. Airflow's own timetable runs it as
    # soon as the DAG is unpaused; ours waits for the next slot.
    plain = CronTriggerTimetable("* * * * *", timezone="UTC")
    ours = NightlySchedule("* * * * *", timezone="UTC")
    plain_next = plain.next_dagrun_info(last_automated_data_interval=None, restriction=fresh)
    ours_next = ours.next_dagrun_info(last_automated_data_interval=None, restriction=fresh)
    assert plain_next is not None and ours_next is not None
    assert plain_next.run_after <= now  # the hidden catch-up run this schedule avoids
    assert ours_next.run_after > now
    # The slot right after the last run is kept when it is a little late (a busy scheduler)...
    slot = plain_next.run_after
    minute = datetime.timedelta(minutes=1)
    just_before = DataInterval(slot - minute, slot - minute)
    kept = ours.next_dagrun_info(last_automated_data_interval=just_before, restriction=fresh)
    assert kept is not None and kept.run_after == slot
    # ...but not after a pause: a day-old last run does not bring back the slot that passed.
    long_ago = DataInterval(slot - 24 * 60 * minute, slot - 24 * 60 * minute)
    paused = ours.next_dagrun_info(last_automated_data_interval=long_ago, restriction=fresh)
    assert paused is not None and paused.run_after > now
    # After a run, the next slot follows as usual; catchup (backfills) is left alone.
    last = DataInterval(ours_next.run_after, ours_next.run_after)
    after = ours.next_dagrun_info(last_automated_data_interval=last, restriction=fresh)
    assert after is not None and after.run_after == ours_next.run_after + minute
    catchup = TimeRestriction(earliest=start, latest=None, catchup=True)
    first = ours.next_dagrun_info(last_automated_data_interval=None, restriction=catchup)
    assert first is not None and first.run_after.year == 2026 and first.run_after < now
    # Serialised for the scheduler and read back the same.
    again = NightlySchedule.deserialize(ours.serialize())
    assert again.grace == ours.grace and again.serialize() == ours.serialize()
