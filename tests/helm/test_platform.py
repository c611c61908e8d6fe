"""Flywheel's own Kubernetes objects (helm-values/flywheel-platform.yaml) and the InferenceService:
valid for the API server, and holding every name and setting the code expects."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.charts import HELM_VALUES, REPO, load_yaml

PLATFORM = HELM_VALUES / "flywheel-platform.yaml"
KUBERNETES_VERSION = "1.37"


def platform_objects() -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(PLATFORM.read_text()) if o]


def kubernetes_validate_command() -> list[str]:
    """kubernetes-validate from this environment, else from the orchestrator's (where the lock
    has it; requirements/steps.lock does not yet)."""
    for folder in (Path(sys.executable).parent, REPO / ".venvs" / "orchestrator" / "bin"):
        found = shutil.which("kubernetes-validate", path=str(folder))
        if found:
            return [found]
    pytest.fail("kubernetes-validate is in neither the steps nor the orchestrator environment")


def kubernetes_problems(objects: list[dict[str, Any]], tmp_path: Path) -> str:
    """What ``kubernetes-validate --strict`` says about ``objects`` ('' when all are valid)."""
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    done = subprocess.run(
        [*kubernetes_validate_command(), "--strict", "--quiet", "-k", KUBERNETES_VERSION, path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_platform_objects_are_valid_kubernetes(tmp_path: Path) -> None:
    assert kubernetes_problems(platform_objects(), tmp_path) == ""


def test_a_misspelt_field_is_refused(tmp_path: Path) -> None:
    """The validation above is strict: a typo in any object fails it."""
    for i, obj in enumerate(platform_objects()):
        broken = copy.deepcopy(platform_objects())
        key = next(k for k in obj if k not in {"apiVersion", "kind"})
        broken[i][f"{key}x"] = broken[i].pop(key)
        assert kubernetes_problems(broken, tmp_path), f"{obj['kind']}: typo not caught"


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in platform_objects() if o["kind"] == kind]


def test_the_names_the_code_expects_exist() -> None:
    from flywheel_airflow.backends.kubernetes import PodSettings

    from ml_tasks.serving.inference_service import ServingOptions

    pods, serving = PodSettings(), ServingOptions()
    assert {o["metadata"]["name"] for o in by_kind("ConfigMap")} == {pods.config_map}
    assert serving.config_map == pods.config_map
    assert {o["metadata"]["name"] for o in by_kind("ServiceAccount")} == {pods.service_account}
    namespaces = {o["metadata"]["namespace"] for o in platform_objects()}
    assert namespaces == {pods.namespace, serving.namespace}


def test_every_secret_the_code_or_values_name_is_created_in_the_guide() -> None:
    from flywheel_airflow.backends.kubernetes import PodSettings

    from ml_tasks.serving.inference_service import ServingOptions

    guide = (REPO / "docs" / "deploy.md").read_text()
    pattern = r"kubectl [^\n]*create secret (?:generic|docker-registry) (\S+)"
    created = set(re.findall(pattern, guide))
    serving = ServingOptions()
    expected = {*PodSettings().secrets, PodSettings().image_pull_secret}
    expected |= {serving.storage_secret, serving.tracking_secret, serving.image_pull_secret}
    names = re.compile(
        r"(\w*(?:SecretName|secretName|existingSecret|scriptsSecret|existingSecretAdminPassword"
        r"|existingSecretSecretKey)): (\S+)"
    )
    for path in HELM_VALUES.glob("*.yaml"):
        text = path.read_text()
        expected |= {name for _, name in names.findall(text)}
        expected |= set(re.findall(r"(?:secretRef|existing\w*Secret):\s*\n\s*name: (\S+)", text))
    assert expected - created == set()


def test_airflow_worker_and_triggerer_may_manage_inference_services() -> None:
    airflow = load_yaml(HELM_VALUES / "airflow.yaml")
    accounts = {
        airflow["workers"]["kubernetes"]["serviceAccount"]["name"],
        airflow["triggerer"]["serviceAccount"]["name"],
    }
    (role,) = by_kind("Role")
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {s["name"] for s in binding["subjects"]} == accounts
    rule = next(r for r in role["rules"] if "inferenceservices" in r["resources"])
    assert rule["apiGroups"] == ["serving.kserve.io"]
    # apply (get, create, replace), restore (delete), the trigger's wait (get/list/watch)
    assert {"get", "list", "watch", "create", "update", "delete"} <= set(rule["verbs"])


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets from the platform's ConfigMap and its own values."""
    (config,) = by_kind("ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") == config["metadata"]["name"]:
            env.update(config["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref and ref["name"] == config["metadata"]["name"]:
            env[item["name"]] = config["data"][ref["key"]]
    return env


def test_the_model_server_gets_the_tracking_and_lake_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved as the server resolves its settings: the registry it loads from is the MLflow
    service, the lake is the bucket (not a folder in the pod)."""
    from ml_tasks.core.settings import load_settings
    from ml_tasks.serving.inference_service import (
        render_inference_service,
        validate_inference_service,
    )

    manifest = render_inference_service("digits", "7")
    validate_inference_service(manifest)
    env = pod_environment(manifest["spec"]["predictor"]["containers"][0])
    for name in ("MLFLOW_TRACKING_URI", "FLYWHEEL_LAKE_URI", "FLYWHEEL_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.tracking_uri == "http://mlflow.flywheel.svc:80"
    assert not settings.tracking_is_local
    assert settings.lake_uri == "s3://flywheel"
    assert env["AWS_ENDPOINT_URL"].startswith("http://minio.")
    assert env["FLYWHEEL_SERVE_HOST"] == "0.0.0.0"
