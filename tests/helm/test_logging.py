"""The logging values against what Flywheel really emits.

Fluent Bit and Loki cannot run here, so this reads the Fluent Bit sections of
helm-values/fluent-bit.yaml and replays their pipeline on real events: a real step run (its
stderr, as the kubelet writes it to the pod's log file) and the Airflow gate's real emitter.
The dashboard is then checked to query only what that pipeline produces.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.helm.charts import HELM_VALUES, REPO, load_yaml

# What the kubelet writes for each line a container prints (CRI log format), and the regex of
# Fluent Bit's built-in ``cri`` multiline parser.
CRI_LINE = "{time} stderr F {line}"
CRI_PARSER = re.compile(r"^(?P<time>[^ ]+) (?P<stream>stdout|stderr) (?P<_p>F|P) (?P<log>.*)$")


def sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """``[SECTION]`` blocks of a classic Fluent Bit config, keys lower-cased."""
    out: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            out.append((line.strip("[]").upper(), {}))
        else:
            key, _, value = line.partition(" ")
            out[-1][1][key.lower()] = value.strip()
    return out


@pytest.fixture(scope="module")
def config() -> dict[str, list[dict[str, str]]]:
    values = load_yaml(HELM_VALUES / "fluent-bit.yaml")["config"]
    found: dict[str, list[dict[str, str]]] = {}
    for part in ("inputs", "filters", "outputs", "customParsers"):
        for name, body in sections(values.get(part, "")):
            found.setdefault(name, []).append(body)
    return found


@pytest.fixture(scope="module")
def pod_log_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A real step's stderr as the kubelet stores it, plus the approval gate's event and a line
    that is not an event (a warning printed by a library)."""
    home = tmp_path_factory.mktemp("flywheel-home")
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(home),
        "AIRFLOW_CTX_DAG_ID": "training",
        "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-03-01T02:00:00+00:00",
        "AIRFLOW_CTX_TASK_ID": "resolve_dataset",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.resolve_dataset", "--result-path", str(home / "r.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    lines += gate_event_lines(home)
    lines.append("UserWarning: something a library printed")
    stamp = "2026-03-01T02:00:01.123456789Z"
    return [CRI_LINE.format(time=stamp, line=line) for line in lines]


def gate_event_lines(home: Path) -> list[str]:
    """The event the approval gate emits (flywheel_airflow.gates.record_gate), as logged."""
    from flywheel_airflow import gates

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("{"):
                records.append(record.getMessage())

    handler = Keep()
    gates.log.addHandler(handler)
    level = gates.log.level
    gates.log.setLevel(logging.INFO)
    context = {
        "dag_run": mock.Mock(dag_id="training", run_id="manual__2026-03-01T02:00:00+00:00"),
        "ti": mock.Mock(task_id="await_approval"),
    }
    try:
        with (
            mock.patch.dict(os.environ, {"FLYWHEEL_HOME": str(home)}),
            mock.patch.object(gates, "set_run_note", return_value=False),
        ):
            gates.record_gate(context, "approval", "approve", "by alice", model_version="7")
    finally:
        gates.log.removeHandler(handler)
        gates.log.setLevel(level)
    assert records
    return records


def pipeline(config: dict[str, list[dict[str, str]]], lines: list[str]) -> list[dict[str, Any]]:
    """Fluent Bit's path for these lines: cri, then the parser filter, then the grep filter."""
    (tail,) = config["INPUT"]
    assert tail["name"] == "tail" and tail["multiline.parser"] == "cri"
    parser_filter = next(f for f in config["FILTER"] if f["name"] == "parser")
    assert parser_filter["key_name"] == "log" and parser_filter["reserve_data"].lower() == "on"
    parser = next(p for p in config["PARSER"] if p["name"] == parser_filter["parser"])
    assert parser["format"] == "json"
    records = []
    for line in lines:
        match = CRI_PARSER.match(line)
        assert match, line
        record: dict[str, Any] = {"log": match["log"], "stream": match["stream"]}
        try:
            parsed = json.loads(match["log"])
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            record.pop("log")
            record.update(parsed)
        records.append(record)
    grep = next(f for f in config["FILTER"] if f["name"] == "grep")
    key, _, pattern = grep["regex"].partition(" ")
    return [r for r in records if key in r and re.search(pattern, str(r[key]))]


def test_the_tail_path_matches_the_pods_log_files(config: dict[str, list[dict[str, str]]]) -> None:
    """/var/log/containers/<pod>_<namespace>_<container>-<id>.log for step pods and the model
    server, and nothing from other namespaces."""
    from flywheel_airflow.backends.kubernetes import PodSettings

    from ml_tasks.serving.inference_service import ServingOptions, render_inference_service

    (tail,) = config["INPUT"]
    container_id = "0" * 64
    step_pod = f"flywheel-train-x7k2p_{PodSettings().namespace}_base-{container_id}.log"
    isvc = render_inference_service("digits", "7", ServingOptions())
    serving_pod = (
        f"{isvc['metadata']['name']}-predictor-5d9f-abcde_{isvc['metadata']['namespace']}_"
        f"{isvc['spec']['predictor']['containers'][0]['name']}-{container_id}.log"
    )
    for name in (step_pod, serving_pod):
        assert fnmatch.fnmatch(f"/var/log/containers/{name}", tail["path"]), name
    other = f"coredns-5d78c9869d-abcde_kube-system_coredns-{container_id}.log"
    assert not fnmatch.fnmatch(f"/var/log/containers/{other}", tail["path"])


def test_events_parse_with_their_own_time(
    config: dict[str, list[dict[str, str]]], pod_log_lines: list[str]
) -> None:
    records = pipeline(config, pod_log_lines)
    assert len(records) == len(pod_log_lines) - 1  # the library's warning is dropped
    parser_filter = next(f for f in config["FILTER"] if f["name"] == "parser")
    parser = next(p for p in config["PARSER"] if p["name"] == parser_filter["parser"])
    python_format = parser["time_format"].replace("%L", "%f")
    for record in records:
        datetime.strptime(record[parser["time_key"]], python_format)


def output_fields(config: dict[str, list[dict[str, str]]], option: str) -> dict[str, str]:
    (loki,) = config["OUTPUT"]
    assert loki["name"] == "loki"
    pairs = [p.strip() for p in loki[option].split(",")]
    return dict(p.split("=", 1) for p in pairs)


def test_labels_are_fields_every_event_carries(
    config: dict[str, list[dict[str, str]]], pod_log_lines: list[str]
) -> None:
    records = pipeline(config, pod_log_lines)
    for label, source in output_fields(config, "labels").items():
        if source.startswith("$"):
            assert all(source[1:] in r for r in records), label


def test_metadata_keys_are_fields_real_events_carry(
    config: dict[str, list[dict[str, str]]], pod_log_lines: list[str]
) -> None:
    records = pipeline(config, pod_log_lines)
    for key, source in output_fields(config, "structured_metadata").items():
        assert source.startswith("$")
        assert any(source[1:] in r for r in records), f"no real event has {key}"


def test_the_dashboard_is_built_from_code_and_queries_only_those_labels(
    config: dict[str, list[dict[str, str]]],
) -> None:
    sys.path.insert(0, str(HELM_VALUES / "dashboards"))
    try:
        import flywheel_events
    finally:
        sys.path.remove(str(HELM_VALUES / "dashboards"))
    built = flywheel_events.flywheel_dashboard().to_json()
    committed = json.loads((HELM_VALUES / "dashboards" / "flywheel-events.json").read_text())
    assert committed == built, "regenerate flywheel-events.json (see the module's docstring)"
    known = set(output_fields(config, "labels")) | set(output_fields(config, "structured_metadata"))
    titles = {p["title"] for p in built["panels"]}
    assert {"Actions per component", "Gate decisions", "Alias moves"} <= titles
    for panel in built["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            used = set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
            for group in re.findall(r"by \(([^)]*)\)", expr):
                used |= {g.strip() for g in group.split(",")}
            assert used and used <= known, (panel["title"], used - known)
