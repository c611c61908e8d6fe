"""Every DAG file imports cleanly, cheaply and safely (Airflow's own example-DAG checks)."""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
DAG_IDS = ("flywheel_ingest", "flywheel_intake", "training", "tuning")
JINJA_LOGIC = re.compile(r"\bif\b|\bis\b|\bnot\b|\band\b|\bor\b|~|\||\+")
HEAVY = ("torch", "mlflow", "great_expectations", "kserve", "kfp", "label_studio_sdk")


def parse_in_fresh_interpreter(path: Path) -> dict[str, object]:
    """Import one DAG file in a new interpreter; report heavy modules, start dates, errors and
    every SQL statement any engine ran while parsing (Airflow's ``assert_queries_count(0)``).

    A fresh interpreter, so imports the DAG file triggers (plugins, ml_tasks) run here too: in
    a warm process they would already be cached and their queries missed. The listener is on
    SQLAlchemy's ``Engine`` class, so it sees the metadata DB however it is reached."""
    code = f"""
import json, sys, time
from sqlalchemy import event
from sqlalchemy.engine import Engine
queries = []
event.listen(Engine, "before_cursor_execute", lambda c, cur, sql, *a: queries.append(sql))
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder={str(path)!r})
print(json.dumps({{
    "queries": queries,
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "heavy": [m for m in {HEAVY!r} if m in sys.modules],
    "start_dates": {{d.dag_id: d.start_date.isoformat() for d in bag.dags.values()}},
    "dags": sorted(bag.dags),
    "seconds": time.perf_counter() - started,
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_dags_folder_defines_each_dag_once() -> None:
    """The folder as the dag-processor sees it: every file counts, no id is defined twice."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == sorted(DAG_IDS)
    assert {Path(dag.fileloc).name for dag in bag.dags.values()} == {p.name for p in DAG_FILES}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_runs_no_metadata_db_queries(path: Path) -> None:
    """Airflow's example-DAG check: the dag-processor parses every file every 30 s, so a query
    at parse time is a query every 30 s per file. Measured: Airflow 3.3's DagBag itself runs
    none while parsing one of these files, so the bound is zero, not the ``1`` older Airflow
    tests allowed for the DagBag's own bookkeeping."""
    assert parse_in_fresh_interpreter(path)["queries"] == []


def test_the_query_check_sees_a_query(tmp_path: Path) -> None:
    """The check above can fail: a DAG file that touches the metadata DB is caught."""
    offender = tmp_path / "queries_at_parse_time.py"
    offender.write_text(
        "from datetime import datetime, timezone\n"
        "from airflow.sdk import dag\n"
        "from airflow.utils.session import create_session\n"
        "from sqlalchemy import text\n"
        "with create_session() as session:\n"
        "    session.execute(text('SELECT 1'))\n"
        "@dag(schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc))\n"
        "def offender() -> None: ...\n"
        "offender()\n"
    )
    parsed = parse_in_fresh_interpreter(offender)
    assert parsed["errors"] == {} and parsed["dags"] == ["offender"]
    assert parsed["queries"] == ["SELECT 1"]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_errors_or_heavy_modules(path: Path) -> None:
    first = parse_in_fresh_interpreter(path)
    assert first["errors"] == {}
    assert first["dags"], f"{path.name} defines no DAG"
    assert first["heavy"] == [], f"{path.name} imports {first['heavy']} at parse time"
    # A static start date parses to the same value every time (no now(), no days_ago).
    assert parse_in_fresh_interpreter(path)["start_dates"] == first["start_dates"]


def call_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_share_one_style(path: Path) -> None:
    """``@dag``-decorated functions, never ``with DAG(...)``; every ``datetime(...)`` is aware,
    so the date is the same whatever ``default_timezone`` a deployment configures; templates
    hold values only."""
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert not [c.lineno for c in calls if call_name(c) == "DAG"], "use @dag, not DAG(...)"
    decorated = [
        f.name
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        and any(isinstance(d, ast.Call) and call_name(d) == "dag" for d in f.decorator_list)
    ]
    assert decorated, f"{path.name} defines no @dag function"
    naive = [
        c.lineno
        for c in calls
        if call_name(c) == "datetime" and not any(k.arg == "tzinfo" for k in c.keywords)
    ]
    assert not naive, f"{path.name}: naive datetime(...) on lines {naive}"
    # A template holds a value (a name, an attribute, a macro call), never logic: conditions,
    # concatenation and filters live in Python (flywheel_airflow.arguments), where they are
    # tested.
    templates = [
        (node.lineno, expression)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for expression in re.findall(r"\{\{(.*?)\}\}|\{%", node.value, flags=re.S)
    ]
    logic = [(line, e) for line, e in templates if not e or JINJA_LOGIC.search(e)]
    assert not logic, f"{path.name}: logic in templates {logic}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_connection_or_variable_lookups_at_parse_time(path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable
    from airflow.sdk.definitions.connection import Connection

    refuse = mock.Mock(side_effect=AssertionError("looked up at parse time"))
    with (
        mock.patch.object(Connection, "get", refuse),
        mock.patch.object(BaseHook, "get_connection", refuse),
        mock.patch.object(Variable, "get", refuse),
    ):
        bag = DagBag(dag_folder=str(path))
    assert bag.import_errors == {}
    refuse.assert_not_called()


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dags_have_tags_docs_retries_and_static_start(path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    for dag in bag.dags.values():
        assert dag.tags, f"{dag.dag_id} has no tags"
        assert dag.doc_md, f"{dag.dag_id} has no doc_md"
        assert dag.start_date is not None and dag.start_date.tzinfo is not None
        assert dag.default_args.get("retries", 0) >= 2, f"{dag.dag_id}: retries < 2"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag.dag_id}.{task.task_id}: retries {task.retries}"


def test_training_dag_shape_and_schedule(training_dag: object) -> None:
    from airflow.sdk import AssetOrTimeSchedule
    from flywheel_airflow.assets import DATASET_URI

    dag = training_dag
    assert isinstance(dag.timetable, AssetOrTimeSchedule)  # type: ignore[attr-defined]
    assert dag.timetable.asset_condition.uri == DATASET_URI  # type: ignore[attr-defined]
    order = ["resolve_dataset", "prepare", "checks", "train", "validate", "register_if_better"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids  # type: ignore[attr-defined]
    gate = dag.get_task("register_if_better")  # type: ignore[attr-defined]
    assert gate.downstream_task_ids == {
        "await_approval",
        "registration_skipped",
        "backfill_keeps_champion",
    }
    approval = dag.get_task("await_approval")  # type: ignore[attr-defined]
    assert approval.downstream_task_ids == {"deploy", "record_rejection"}
    # Production default: nobody answering in time means Reject.
    assert approval.defaults == ["Reject"]
    assert approval.response_timeout == timedelta(hours=24)
    assert approval.options_mapping == {"Approve": "deploy", "Reject": "record_rejection"}


def test_training_schedule_survives_serialization(training_dag: object) -> None:
    """The dag-processor stores the DAG serialized and the scheduler reads it back: the custom
    nightly timetable (registered by ``plugins/flywheel_timetables.py``) must round-trip."""
    from airflow.serialization.serialized_objects import DagSerialization
    from flywheel_airflow.timetables.nightly import NightlySchedule

    back = DagSerialization.from_dict(DagSerialization.to_dict(training_dag))
    schedule = back.timetable.timetable  # type: ignore[attr-defined]
    assert isinstance(schedule, NightlySchedule)
    assert schedule.serialize() == training_dag.timetable.timetable.serialize()  # type: ignore[attr-defined]
