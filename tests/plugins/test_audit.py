"""``python -m ml_tasks.audit``: what happened to a model version, dataset version or run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LOG = [
    {
        "ts": "2026-03-01T02:00:01.000+00:00",
        "component": "validate",
        "action": "alias_moved",
        "alias": "challenger",
        "model_version": "4",
        "dataset_version": "f93",
        "run_id": "run-a",
    },
    {
        "ts": "2026-03-01T02:10:00.000+00:00",
        "component": "airflow",
        "action": "gate_decided",
        "gate": "approval",
        "decision": "approve",
        "who": "alice",
        "model_version": "4",
        "run_id": "run-a",
    },
    {
        "ts": "2026-03-01T02:11:00.000+00:00",
        "component": "deploy",
        "action": "alias_moved",
        "alias": "champion",
        "model_version": "4",
        "previous_champion": "3",
        "who": "alice",
        "caller_run_id": "run-a",
        "dataset_version": "f93",
    },
    {
        "ts": "2026-03-02T02:00:00.000+00:00",
        "component": "validate",
        "action": "registration_decided",
        "decision": "skip",
        "dataset_version": "a11",
        "run_id": "run-b",
        "incumbent_version": "4",
    },
]


@pytest.fixture()
def log(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in LOG) + "not json\n")
    return path


def audit(log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_tasks.audit", "--log", str(log), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_model_version_history_newest_first(log: Path) -> None:
    done = audit(log, "--model-version", "4", "--json")
    actions = [
        (e["action"], e.get("alias") or e.get("gate") or e.get("decision"))
        for e in json.loads(done.stdout)
    ]
    assert actions == [
        ("registration_decided", "skip"),
        ("alias_moved", "champion"),
        ("gate_decided", "approval"),
        ("alias_moved", "challenger"),
    ]


def test_the_previous_champion_sees_its_replacement(log: Path) -> None:
    rows = json.loads(audit(log, "--model-version", "3", "--json").stdout)
    assert [e["action"] for e in rows] == ["alias_moved"] and rows[0]["who"] == "alice"


def test_dataset_and_run_filters(log: Path) -> None:
    assert len(json.loads(audit(log, "--dataset-version", "f9", "--json").stdout)) == 2
    by_run = json.loads(audit(log, "--run-id", "run-a", "--json").stdout)
    assert {e["action"] for e in by_run} == {"alias_moved", "gate_decided"} and len(by_run) == 3


def test_readable_table_and_usage(log: Path) -> None:
    table = audit(log, "--run-id", "run-a").stdout.splitlines()
    assert table[0].split()[:3] == ["ts", "component", "action"]
    assert 'previous_champion="3"' in table[2]
    assert audit(log).returncode == 2  # no filter: a usage error
