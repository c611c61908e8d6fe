"""What the step pods pull and carry, from the pod spec the kubernetes backend renders: the
step image from the settings, the XCom sidecar from the same registry (not Docker Hub), and the
Label Studio and git credentials from Secrets for the steps that need them.
"""

from __future__ import annotations

from typing import Any

from tests.images import pods

STEPS_IMAGE = "registry.example.test/flywheel/steps:0123456789ab"
TRAINING = ("training.py", "training")
BATCH = {"claim_images": {"batch_id": "b-1", "claimed": 3}}


def containers(task_id: str, dag: tuple[str, str], upstream: dict[str, Any]) -> dict[str, Any]:
    pod = pods.render_step_pod(task_id, upstream, {"FLYWHEEL_STEPS_IMAGE": STEPS_IMAGE}, dag=dag)
    return {c["name"]: c for c in pod["spec"]["containers"]}


def test_the_step_image_is_the_one_the_settings_name() -> None:
    base = containers("prepare", TRAINING, {"resolve_dataset": {"dataset_version": "ab12"}})
    assert base["base"]["image"] == STEPS_IMAGE


def test_the_xcom_sidecar_comes_from_the_registry_not_docker_hub() -> None:
    by_name = containers("prepare", TRAINING, {"resolve_dataset": {"dataset_version": "ab12"}})
    assert by_name["airflow-xcom-sidecar"]["image"] == STEPS_IMAGE


def secret_keys(container: dict[str, Any]) -> set[str]:
    """The variables a container takes from Secrets (single keys and whole Secrets named)."""
    names = {
        item["name"]
        for item in container.get("env") or []
        if (item.get("valueFrom") or {}).get("secretKeyRef")
    }
    names |= {
        f"secret:{source['secretRef']['name']}"
        for source in container.get("envFrom") or []
        if "secretRef" in source
    }
    return names


def test_the_label_studio_step_gets_its_token_from_a_secret() -> None:
    base = containers("create_label_studio_tasks", ("intake.py", "flywheel_intake"), BATCH)["base"]
    assert "LABEL_STUDIO_API_KEY" in secret_keys(base)


def test_the_ingest_step_gets_git_credentials_from_a_secret() -> None:
    base = containers("ingest_annotations", ("ingest.py", "flywheel_ingest"), {})["base"]
    keys = secret_keys(base)
    assert "FLYWHEEL_GIT_TOKEN" in keys or any(k.startswith("secret:") and "git" in k for k in keys)
