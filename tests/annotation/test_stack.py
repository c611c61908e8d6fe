"""The local stack for real (``python -m tools.stack up``): its logins, and what it keeps.

One stack for the session (the ``stack`` fixture), in a throwaway ``FLYWHEEL_HOME`` on free
ports (the same ``FLYWHEEL_STACK_*_PORT`` variables a user sets), against a throwaway copy of
the repository:

- the approver it creates answers the training DAG's approval; the non-approver gets 403;
- ``down`` then ``up``: the lake's objects, MLflow's runs, Label Studio's tasks and Airflow's
  runs are all still there, on the same ports.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from stack_support import Stack, dag_parsed, wait_for

# starting the stack, a dataset push and a training run: minutes on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_the_approver_answers_the_approval_and_the_non_approver_is_refused(
    stack: Stack,
) -> None:
    from flywheel_airflow.rest_api import ApiError

    passwords = stack.passwords()
    for user in ("admin", "approver", "non-approver"):
        assert f"{user} " in stack.printed and passwords[user] in stack.printed
    stack.with_dataset()
    api = stack.api()
    api.call("PATCH", "/dags/training", "admin", {"is_paused": False})
    api.call(
        "POST",
        "/dags/training/dagRuns",
        "admin",
        {"logical_date": None, "conf": {"epochs": 4, "force_register": True}},
    )
    # The first run to reach the gate (this one, or a nightly slot the scheduler started).
    detail = stack.approval_request("training", "approver", timeout=900)
    run_id = detail["task_instance"]["dag_run_id"]
    assert [u["id"] for u in detail["assigned_users"]] == ["approver"]

    with pytest.raises(ApiError) as refused:
        api.answer(detail, "non-approver", "Approve")
    assert refused.value.status == 403
    api.answer(detail, "approver", "Approve")

    assert stack.wait_for_run("training", run_id, timeout=600) == "success"
    states = api.task_states("training", run_id, "admin")
    assert states["deploy"] == "success", states


def test_down_then_up_keeps_everything_on_the_same_ports(stack: Stack) -> None:
    from label_studio_sdk import LabelStudio

    before = stack.state
    urls = {
        "s3": before["s3"],
        "mlflow": before["mlflow"],
        "label_studio": before["label_studio"]["url"],
        "airflow": stack.airflow_url,
    }
    # Something in each store.
    stack.s3().put_object(Bucket="flywheel", Key="kept/one.txt", Body=b"still here")
    request = urllib.request.Request(
        f"{urls['mlflow']}/api/2.0/mlflow/runs/create",
        data=json.dumps({"experiment_id": "0", "run_name": "kept"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        mlflow_run = json.loads(response.read())["run"]["info"]["run_id"]
    ls = LabelStudio(base_url=urls["label_studio"], api_key=before["label_studio"]["token"])
    project = ls.projects.create(title="kept across restarts")
    ls.projects.import_tasks(id=project.id, request=[{"data": {"text": "kept"}}])
    api = stack.api()
    wait_for(lambda: dag_parsed(api, "flywheel_ingest"), 180, "the ingest DAG parsed")
    airflow_run = api.call("POST", "/dags/flywheel_ingest/dagRuns", "admin", {"logical_date": None})

    stack.run("down")
    for url in urls.values():  # really stopped
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            assert sock.connect_ex((host, int(port))) != 0, f"{url} still answers after down"
    stack.run("up")

    after = stack.state
    assert {
        "s3": after["s3"],
        "mlflow": after["mlflow"],
        "label_studio": after["label_studio"]["url"],
        "airflow": stack.airflow_url,
    } == urls
    got = stack.s3().get_object(Bucket="flywheel", Key="kept/one.txt")["Body"].read()
    assert got == b"still here"
    with urllib.request.urlopen(
        f"{urls['mlflow']}/api/2.0/mlflow/runs/get?run_id={mlflow_run}", timeout=30
    ) as response:
        assert json.loads(response.read())["run"]["info"]["run_name"] == "kept"
    ls = LabelStudio(base_url=urls["label_studio"], api_key=after["label_studio"]["token"])
    tasks = list(ls.tasks.list(project=project.id))
    assert [t.data["text"] for t in tasks] == ["kept"]
    api = stack.api()  # the same logins, new tokens
    found = api.dag_run("flywheel_ingest", airflow_run["dag_run_id"], "admin")
    assert found["dag_run_id"] == airflow_run["dag_run_id"]
