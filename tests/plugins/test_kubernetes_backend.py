"""The kubernetes backend without a cluster: every step's pod rendered and validated against the
Kubernetes schemas, the deploy's defer/resume logic with a patched API, the readiness trigger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "training.py"))
    assert bag.import_errors == {}
    return bag.dags["training"]


def fake_context(dag: Any, task: Any, *, run_type: str = "manual") -> dict[str, Any]:
    """What the templates read: params, run ids, and the upstream results as XComs."""
    upstream = {
        "resolve_dataset": {"dataset_version": "f9344aa9688f9580d5cee22719ea596a"},
        "train": {"mlflow_run_id": "0123456789abcdef0123456789abcdef"},
        "validate": {"model_version": "7", "registered": True},
    }

    class FakeTI:  # a plain class: the sandboxed Jinja refuses to call mocks
        dag_id, task_id, try_number, map_index = dag.dag_id, task.task_id, 1, -1

        def xcom_pull(self, task_ids: str | None = None, key: str = "return_value") -> Any:
            if key == "decision":  # the answer that leads to this task: approve for deploy
                approved = task.task_id == "deploy"
                choice = "Approve" if approved else "Reject"
                return {"who": "alice", "timed_out": False, "approved": approved, "choice": choice}
            return upstream[task_ids]

    ti = FakeTI()
    run_id = f"{run_type}__2026-03-01T02:00:00+00:00"
    logical_date = datetime(2026, 3, 1, 2, tzinfo=UTC)
    return {
        "ti": ti,
        "task_instance": ti,
        "task": task,
        "run_id": run_id,
        "dag_run": mock.Mock(
            run_id=run_id, run_type=run_type, dag_id=dag.dag_id, logical_date=logical_date
        ),
        "logical_date": logical_date,
        "params": {k: dag.params[k] for k in dag.params},
        "is_backfill": __import__("flywheel_airflow.gates", fromlist=["x"]).is_backfill,
    }


def step_tasks(dag: Any) -> list[Any]:
    from flywheel_airflow.operators.step import StepOperator

    return [t for t in dag.tasks if isinstance(t, StepOperator)]


def test_every_step_renders_a_valid_hardened_pod(dag: Any) -> None:
    import copy

    import kubernetes_validate
    from flywheel_airflow.backends.kubernetes import build_step_pod
    from kubernetes.client import ApiClient

    steps = step_tasks(dag)
    assert {t.task_id for t in steps} == {
        "resolve_dataset",
        "prepare",
        "checks",
        "train",
        "validate",
        "deploy",
        "record_rejection",
    }
    for original in steps:
        task = copy.copy(original)
        context = fake_context(dag, task)
        task.render_template_fields(context)
        assert all(a and "{{" not in a and "object at" not in a for a in task.arguments), (
            task.arguments
        )
        kpo = build_step_pod(task.step, task.arguments, context, task_id=task.task_id)
        kpo.render_template_fields(context)
        pod = kpo.build_pod_request_obj(dry_run=True)
        manifest = ApiClient().sanitize_for_serialization(pod)
        kubernetes_validate.validate(manifest, "1.37", strict=True)

        spec = manifest["spec"]
        base = next(c for c in spec["containers"] if c["name"] == "base")
        assert base["command"] == ["python"]
        assert base["args"][:2] == ["-m", f"ml_tasks.{task.step}"]
        assert base["args"][2:] == list(task.arguments)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:  # the XCom sidecar too
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
        assert spec["imagePullSecrets"] == [{"name": "harbor-pull"}]
        assert base["image"].startswith("harbor.flywheel.local/flywheel/steps:")
        refs = [e.get("secretRef", {}).get("name") for e in base["envFrom"]]
        assert {"flywheel-mlflow", "flywheel-s3"} <= set(refs)
        assert not any(k in str(base.get("env")) for k in ("SECRET_ACCESS_KEY", "PASSWORD"))
        assert base["resources"]["limits"]["memory"]
        assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["containers"])


def test_backfill_runs_resolve_the_dataset_as_of_their_date(dag: Any) -> None:
    import copy

    task = copy.copy(dag.get_task("resolve_dataset"))
    task.render_template_fields(fake_context(dag, task, run_type="backfill"))
    assert task.arguments == ["--as-of=2026-03-01T02:00:00+00:00"]
    task = copy.copy(dag.get_task("resolve_dataset"))
    task.render_template_fields(fake_context(dag, task, run_type="manual"))
    assert task.arguments == []


def test_runs_triggered_by_hand_have_no_logical_date_and_still_render(dag: Any) -> None:
    """Airflow 3 leaves ``logical_date`` out of a manual run's context (UI, CLI, REST)."""
    import copy

    for original in step_tasks(dag):
        task = copy.copy(original)
        context = fake_context(dag, task, run_type="manual")
        del context["logical_date"]
        context["dag_run"].logical_date = None  # and its run has none either
        task.render_template_fields(context)  # raises UndefinedError on a bare logical_date
        assert not any("logical-date" in a or "as-of" in a for a in task.arguments), task


def test_backfill_runs_validate_without_registering(dag: Any) -> None:
    import copy

    for run_type, expected in (("backfill", True), ("manual", False), ("scheduled", False)):
        task = copy.copy(dag.get_task("validate"))
        task.render_template_fields(fake_context(dag, task, run_type=run_type))
        assert ("--evaluate-only" in task.arguments) is expected, (run_type, task.arguments)


def test_a_pod_whose_step_refused_its_input_fails_without_retry() -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from flywheel_airflow.backends import kubernetes as backend
    from flywheel_airflow.operators.step import StepOperator

    op = StepOperator(task_id="checks", step="checks", arguments=["--dataset-version", "abc"])
    kpo = mock.Mock()
    kpo.execute.side_effect = AirflowException("Pod returned a failure")
    terminated = mock.Mock(exit_code=3)
    container = mock.Mock(state=mock.Mock(terminated=terminated))
    container.name = "base"
    kpo.pod_manager.read_pod.return_value = mock.Mock(
        status=mock.Mock(container_statuses=[container])
    )
    with (
        mock.patch.object(backend, "build_step_pod", return_value=kpo),
        mock.patch.dict("os.environ", {"FLYWHEEL_BACKEND": "kubernetes"}),
    ):
        with pytest.raises(AirflowFailException, match="refused its input"):
            op.execute({"ti": mock.Mock(), "run_id": "r"})
        terminated.exit_code = 1  # a crash: an ordinary failure, retried
        with pytest.raises(AirflowException) as raised:
            op.execute({"ti": mock.Mock(), "run_id": "r"})
        assert not isinstance(raised.value, AirflowFailException)


# --- deploy on the cluster -----------------------------------------------------------------


def deploy_op(model_version: str = "7") -> Any:
    """The DAG's deploy task as a worker has it: its templates rendered."""
    from flywheel_airflow.operators.deploy import DeployOperator

    op = DeployOperator(
        task_id="deploy", model_version=model_version, approved_by="alice", caller_run_id="r"
    )
    op.render_template_fields({})
    return op


def test_deploy_renders_its_typed_fields_as_the_promote_command() -> None:
    assert deploy_op().arguments == [
        "promote",
        "--model-version",
        "7",
        "--approved-by",
        "alice",
        "--caller-run-id",
        "r",
    ]
    assert deploy_op(" 12 ").model_version == 12


@pytest.mark.parametrize("nobody", ["", " ", "None"])
def test_deploy_without_an_approver_fails_without_retry(nobody: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from flywheel_airflow.operators.deploy import DeployOperator

    op = DeployOperator(task_id="deploy", model_version="7", approved_by=nobody)
    with pytest.raises(AirflowFailException, match="no approver"):
        op.render_template_fields({"run_id": "r"})


@pytest.mark.parametrize("unregistered", ["", "None", "0", "v7"])
def test_deploy_without_a_registered_version_fails_without_retry(unregistered: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="nothing to deploy"):
        deploy_op(unregistered)


def test_deploy_applies_the_service_then_defers_without_moving_champion() -> None:
    from airflow.sdk.exceptions import TaskDeferred
    from flywheel_airflow.backends import cluster_deploy as backend
    from flywheel_airflow.triggers.inference_service import InferenceServiceReadyTrigger
    from kubernetes.client.exceptions import ApiException

    api = mock.Mock()
    api.get_namespaced_custom_object.side_effect = ApiException(status=404)
    with (
        mock.patch.object(backend, "custom_objects", return_value=api),
        mock.patch.object(backend, "run_step_pod") as pods,
        mock.patch.dict("os.environ", {"FLYWHEEL_BACKEND": "kubernetes"}),
        pytest.raises(TaskDeferred) as deferred,
    ):
        deploy_op().execute({"ti": mock.Mock(), "run_id": "r"})
    pods.assert_not_called()  # champion moves only after Ready, in execute_deployed
    created = api.create_namespaced_custom_object.call_args.args
    assert created[:4] == ("serving.kserve.io", "v1beta1", "flywheel", "inferenceservices")
    assert created[4]["spec"]["predictor"]["containers"][0]["args"] == [
        "--model-uri",
        "models:/digits/7",
    ]
    trigger = deferred.value.trigger
    assert isinstance(trigger, InferenceServiceReadyTrigger)
    assert trigger.model_version == "7" and deferred.value.method_name == "execute_deployed"
    assert deferred.value.kwargs["previous"] is None
    # The trigger's kwargs must survive serialisation to the triggerer.
    import json

    json.dumps(trigger.serialize()[1])


def test_a_failed_rollout_restores_the_previous_service_and_keeps_champion() -> None:
    from airflow.sdk.exceptions import AirflowException
    from flywheel_airflow.backends import cluster_deploy as backend

    from ml_tasks.serving.inference_service import render_inference_service

    manifest = render_inference_service("digits", "7")
    previous = backend.restorable(
        {**render_inference_service("digits", "6"), "status": {"url": "x"}}
    )
    api = mock.Mock()
    api.get_namespaced_custom_object.return_value = {
        **manifest,
        "metadata": {**manifest["metadata"], "resourceVersion": "42"},
    }
    with (
        mock.patch.object(backend, "custom_objects", return_value=api),
        mock.patch.object(backend, "run_step_pod") as pods,
        pytest.raises(AirflowException, match=r"champion unchanged.*model version 6"),
    ):
        deploy_op().execute_deployed(
            {}, {"status": "timeout", "message": "slow"}, manifest=manifest, previous=previous
        )
    pods.assert_not_called()
    replaced = api.replace_namespaced_custom_object.call_args.args[5]
    assert replaced["metadata"]["annotations"]["flywheel.io/model-version"] == "6"
    assert replaced["metadata"]["resourceVersion"] == "42"


def test_a_ready_rollout_moves_champion_with_the_promote_step() -> None:
    from flywheel_airflow.backends import cluster_deploy as backend

    from ml_tasks.serving.inference_service import render_inference_service

    moved = {"model_version": "7", "alias": "champion"}
    with (
        mock.patch.object(backend, "custom_objects", return_value=mock.Mock()),
        mock.patch.object(backend, "run_step_pod", return_value=moved) as pods,
    ):
        result = deploy_op().execute_deployed(
            {},
            {"status": "ready", "message": "ok"},
            manifest=render_inference_service("digits", "7"),
        )
    assert result["alias"] == "champion"
    assert pods.call_args.args[:2] == (
        "deploy",
        ["promote", "--model-version", "7", "--approved-by", "alice", "--caller-run-id", "r"],
    )


def test_a_failed_champion_move_restores_the_previous_service() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from flywheel_airflow.backends import cluster_deploy as backend

    from ml_tasks.serving.inference_service import render_inference_service

    api = mock.Mock()
    with (
        mock.patch.object(backend, "custom_objects", return_value=api),
        mock.patch.object(
            backend, "run_step_pod", side_effect=AirflowFailException("refused its input")
        ),
        pytest.raises(AirflowFailException),
    ):
        deploy_op().execute_deployed(
            {}, {"status": "ready"}, manifest=render_inference_service("digits", "7")
        )
    api.delete_namespaced_custom_object.assert_called_once()  # nothing served before


def isvc(
    version: str,
    *,
    ready: str | None,
    generation: int = 2,
    observed: int | None = 2,
    model_state: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "url": "http://digits.example"}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "Rolling"}]
    if model_state:
        status["modelStatus"] = {
            "states": {"targetModelState": model_state},
            "lastFailureInfo": {"message": "no such model"},
        }
    return {
        "metadata": {
            "generation": generation,
            "annotations": {"flywheel.io/model-version": version},
        },
        "status": status,
    }


def test_readiness_decisions() -> None:
    from flywheel_airflow.triggers.inference_service import readiness

    assert readiness(None, "7")[0] == "pending"
    assert readiness(isvc("6", ready="True"), "7")[0] == "pending"  # still the old version
    assert readiness(isvc("7", ready="True", observed=1), "7")[0] == "pending"  # stale status
    assert readiness(isvc("7", ready="False"), "7")[0] == "pending"
    assert readiness(isvc("7", ready="True"), "7")[0] == "ready"
    state, why = readiness(isvc("7", ready="False", model_state="FailedToLoad"), "7")
    assert state == "failed" and "no such model" in why


def collect(trigger: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(run())


def test_trigger_fires_ready_after_polling_a_rollout() -> None:
    from flywheel_airflow.triggers.inference_service import InferenceServiceReadyTrigger

    seen = iter(
        [None, isvc("6", ready="True"), isvc("7", ready="Unknown"), isvc("7", ready="True")]
    )
    trigger = InferenceServiceReadyTrigger(
        name="digits", namespace="flywheel", model_version="7", poll_interval=0, timeout_seconds=30
    )

    async def get_object() -> Any:
        return next(seen)

    with mock.patch.object(trigger, "get_object", get_object):
        events = collect(trigger)
    assert [e.payload["status"] for e in events] == ["ready"]


def test_trigger_times_out_with_the_last_reason() -> None:
    from flywheel_airflow.triggers.inference_service import InferenceServiceReadyTrigger

    trigger = InferenceServiceReadyTrigger(
        name="digits",
        namespace="flywheel",
        model_version="7",
        poll_interval=0.01,
        timeout_seconds=0.05,
    )

    async def get_object() -> Any:
        return isvc("7", ready="False")

    with mock.patch.object(trigger, "get_object", get_object):
        events = collect(trigger)
    assert events[-1].payload["status"] == "timeout"
    assert "Ready=False" in events[-1].payload["message"]
