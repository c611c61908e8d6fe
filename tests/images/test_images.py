"""The steps and serve images, tested by running them: built (buildah here, Docker where a
daemon answers), pushed to the local registry, pulled back into an empty image store, and run
from the pulled copies exactly as the rendered pods run them (:mod:`tests.images.pods`):
prepare, checks, train and validate against an S3 lake and an MLflow server on 127.0.0.1, then
the model server with the InferenceService's spec, answering a prediction.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.datasets import materialize
from tests.images import pods
from tests.repo_copy import make_repo_copy
from tests.servers import mlflow_server, s3_server
from tools import images
from tools.local_servers import free_port
from tools.registry import running_registry

# A cold build (the locked environment, ~13 min here) runs inside the first test's fixture.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
REPO = Path(__file__).resolve().parents[2]
S3_KEYS = {"AWS_ACCESS_KEY_ID": "flywheel-test", "AWS_SECRET_ACCESS_KEY": "flywheel-test-secret"}
# The Secrets' keys as docs/deploy.md creates them, with test values.
SECRETS = {
    "flywheel-s3": S3_KEYS,
    "flywheel-mlflow": {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""},
}


def platform_config_map() -> dict[str, str]:
    """``flywheel-config`` as helm-values/flywheel-platform.yaml ships it."""
    for doc in yaml.safe_load_all((REPO / "helm-values" / "flywheel-platform.yaml").read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "flywheel-config":
            return {k: str(v) for k, v in doc["data"].items()}
    raise AssertionError("no flywheel-config ConfigMap in helm-values/flywheel-platform.yaml")


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """Both images built, pushed to a local registry, and pulled into an empty store."""
    images.ensure_tools()
    built = {b.name: b.ref for b in images.build(["steps", "serve"])}
    root = tmp_path_factory.mktemp("registry")
    store = tmp_path_factory.mktemp("store")
    try:
        with running_registry(root, free_port()) as host:
            registry = images.Registry(host, "flywheel")
            refs = {}
            for name, local in built.items():
                remote = registry.ref(name, local.rsplit(":", 1)[1])
                images.push(local, remote, registry)
                images.pull(remote, registry, store=store)
                refs[name] = remote
        yield refs, store
    finally:
        images.remove_store(store)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The lake (a moto S3 endpoint holding the digits in the DVC remote) and MLflow."""
    work = tmp_path_factory.mktemp("services")
    with s3_server() as endpoint, mlflow_server(work / "mlflow") as tracking:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto(S3_KEYS))
        s3.create_bucket(Bucket="flywheel")
        # The committed dataset version, pushed to the DVC remote the pods use ("minio").
        env = {
            "FLYWHEEL_REPO": str(make_repo_copy(work / "repo")),
            "FLYWHEEL_HOME": str(work / "home"),
            "FLYWHEEL_DVC_REMOTE": "minio",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(work),
            **S3_KEYS,
        }
        version = materialize(env)["dataset_version"]
        yield {"endpoint": endpoint, "tracking": tracking, "dataset_version": version}


def _boto(keys: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"],
    }


def config_maps(services: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ConfigMap's keys, with the cluster's addresses replaced by this machine's servers."""
    return {
        "flywheel-config": {
            **platform_config_map(),
            "MLFLOW_TRACKING_URI": services["tracking"],
            "AWS_ENDPOINT_URL": services["endpoint"],
        }
    }


def run_step_pod(
    task_id: str,
    upstream: dict[str, Any],
    pulled: tuple[dict[str, str], Path],
    services: dict[str, str],
    work: Path,
) -> tuple[int, dict[str, Any] | None, str]:
    """Render ``task_id``'s pod with the pulled steps image, run it; exit code, result, log."""
    refs, store = pulled
    pod = pods.render_step_pod(task_id, upstream, {"FLYWHEEL_STEPS_IMAGE": refs["steps"]})
    spec = pod["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert base["image"] == refs["steps"]  # the backend takes the reference from the settings
    log = work / f"{task_id}.log"
    with pods.run_container(
        base,
        spec.get("securityContext") or {},
        store=store,
        workdir=work / task_id,
        config_maps=config_maps(services),
        secrets=SECRETS,
        log=log,
    ) as run:
        code = run.process.wait(timeout=1800)
        if run.read_only_root and code == 0:
            written = run.written_outside_mounts(store)
            assert written == [], f"{task_id} wrote to its read-only root: {written}"
        result_file = run.volumes["/airflow/xcom"] / "return.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
    return code, result, pods.tail(log)


def test_prepare_runs_in_the_pulled_steps_image_as_its_pod_runs_it(
    pulled: tuple[dict[str, str], Path], services: dict[str, str], tmp_path: Path
) -> None:
    """Defect 4: a read-only /workspace without git history made prepare exit 3."""
    version = services["dataset_version"]
    code, result, log = run_step_pod(
        "prepare", {"resolve_dataset": {"dataset_version": version}}, pulled, services, tmp_path
    )
    assert code == 0, log
    assert result is not None and result["status"] == "ok", log
    assert result["dataset_version"] == version
    assert result["prepared"] == 1797 and result["quarantined"] == 0


def test_the_training_chain_runs_in_the_steps_image_then_the_serve_image_predicts(
    pulled: tuple[dict[str, str], Path], services: dict[str, str], tmp_path: Path
) -> None:
    version = services["dataset_version"]
    upstream: dict[str, Any] = {"resolve_dataset": {"dataset_version": version}}
    for task_id in ("prepare", "checks", "train", "validate"):
        code, result, log = run_step_pod(task_id, upstream, pulled, services, tmp_path)
        assert code == 0, f"{task_id}:\n{log}"
        assert result is not None and result["status"] == "ok", log
        upstream[task_id] = result
    assert upstream["validate"]["registered"] is True, upstream["validate"]
    model_version = str(upstream["validate"]["model_version"])

    refs, store = pulled
    render = (
        "import json, sys; from ml_tasks.serving.inference_service import ServingOptions, "
        "render_inference_service, validate_inference_service; "
        f"m = render_inference_service('digits', '{model_version}', ServingOptions.from_env()); "
        "validate_inference_service(m); print(json.dumps(m))"
    )
    manifest = json.loads(
        subprocess.run(
            [sys.executable, "-c", render],
            env={**_clean_env(), "FLYWHEEL_SERVE_IMAGE": refs["serve"]},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    predictor = manifest["spec"]["predictor"]
    server = predictor["containers"][0]
    assert server["image"] == refs["serve"]
    port = free_port()
    # The one change: the host's network is shared, so the test picks a free port on loopback
    # (a pod has its own address and port 8080).
    with pods.run_container(
        server,
        predictor.get("securityContext") or {},
        store=store,
        workdir=tmp_path / "serve",
        config_maps=config_maps(services),
        secrets=SECRETS,
        extra_args=("--http-port", str(port)),
        env_overrides={"FLYWHEEL_SERVE_HOST": "127.0.0.1"},
        log=tmp_path / "serve.log",
    ) as run:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert run.process.poll() is None, pods.tail(tmp_path / "serve.log")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, pods.tail(tmp_path / "serve.log")
            time.sleep(1)
        body, label = digit_request()
        request = urllib.request.Request(
            f"{url}/v1/models/digits:predict",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            response = json.loads(answer.read())
        assert str(response["predictions"][0]["label"]) == label, response
        assert str(response["model_version"]) == model_version
        if run.read_only_root:
            written = run.written_outside_mounts(store)
            assert written == [], f"the model server wrote to its read-only root: {written}"


def digit_request() -> tuple[bytes, str]:
    """One real digit the model has seen (scikit-learn's), as the v1 payload; its label."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = 0  # a clear "0"
    pixels = np.rint(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    payload = {"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]}
    return json.dumps(payload).encode(), str(digits.target[index])


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_SERVE")}


def test_clean_up_leaves_no_container() -> None:
    """The runs above removed their containers (the pulled images went with their store)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    listed = images.buildah("containers", "--format", "{{.ImageName}}").stdout
    assert "127.0.0.1:" not in listed, listed
