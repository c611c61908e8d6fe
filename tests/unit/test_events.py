import io
import json
import logging
from pathlib import Path

import pytest

from ml_tasks.core import events


def test_event_lines_carry_time_component_action_and_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "training")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__1")
    stream = io.StringIO()
    log = tmp_path / "events.jsonl"
    events.configure("prepare", path=log, stream=stream)
    events.emit("prepared", dataset_version="abc", images=3)
    line = json.loads(log.read_text())
    assert line["component"] == "prepare" and line["action"] == "prepared"
    assert line["dag_id"] == "training" and line["run_id"] == "manual__1"
    assert line["dataset_version"] == "abc" and line["images"] == 3
    assert line["ts"].endswith("+00:00")
    assert json.loads(stream.getvalue()) == line


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events.configure("test", path=log, stream=io.StringIO())
    events.emit(
        "connected",
        api_token="s3cr3t-token",
        uri="postgresql://flywheel:hunter2@db:5432/mlflow",
        nested={"aws_secret_access_key": "AKIA-secret"},
    )
    text = log.read_text()
    for secret in ("s3cr3t-token", "hunter2", "AKIA-secret"):
        assert secret not in text
    assert "postgresql://flywheel:***@db:5432/mlflow" in text


def test_read_events_returns_what_was_written(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events.configure("test", path=log, stream=io.StringIO())
    for i in range(3):
        events.emit("step", i=i)
    assert [e["i"] for e in events.read_events(log)] == [0, 1, 2]


def test_unreadable_lines_are_counted_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text('{"action": "a"}\n{"action": "cut sho\n[1, 2]\n{"action": "b"}\n')
    assert [e["action"] for e in events.read_events(log)] == ["a", "b"]
    assert "2 unreadable line(s)" in capsys.readouterr().err


def test_inside_an_airflow_task_events_go_to_its_logger_at_their_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Airflow files a task's raw stderr as ERROR: an info event must not show as a red line.
    logger = logging.getLogger("flywheel.test.task")
    events.configure("airflow", path=tmp_path / "events.jsonl", logger=logger)
    with caplog.at_level(logging.DEBUG, logger="flywheel.test.task"):
        events.emit("gate_decided", gate="approval")
        events.emit("dataset_not_local", level="warning")
        events.emit("failed", level="error")
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING, logging.ERROR]
    assert json.loads(caplog.records[0].getMessage())["action"] == "gate_decided"
    assert capsys.readouterr().err == ""
    assert len(events.read_events(tmp_path / "events.jsonl")) == 3
