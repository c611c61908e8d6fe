"""The KServe ``InferenceService`` that serves a model version, as a plain dict, and its check.

Pure Python (stdlib + PyYAML; ``jsonschema`` only inside :func:`validate_inference_service`),
so the Airflow side renders and applies the same manifest the ``deploy`` step writes to the
lake, without importing KServe (which cannot share an environment with Airflow 3.3).

The predictor is a custom container built from ``images/serve``: it runs
``python -m ml_tasks.serve --model-uri models:/<name>/<version>`` (KServe's ``ModelServer``
with the v2 protocol), as a non-root user on a read-only root file system, with readiness and
liveness probes on the v2 health endpoints. Credentials (the MLflow server, the S3 store of
its artifacts) come from Kubernetes Secrets through ``envFrom``, the tracking and lake URIs from
the ``flywheel-config`` ConfigMap; nothing secret is rendered.

No cluster runs where this is developed, so the manifest is validated offline against KServe's
CRD, vendored beside this module (``ml_tasks/serving/schemas/``; source and licence in ``NOTICE``;
``FLYWHEEL_SCHEMAS_DIR`` overrides the folder): the CRD's v1beta1 ``openAPIV3Schema`` (what the
API server checks) plus a strict pass that rejects fields the schema does not declare, as
``kubectl apply --validate=strict`` would; a typo must not silently deploy a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CRD_FILE = "kserve-inferenceservices-crd.yaml"
API_VERSION = "serving.kserve.io/v1beta1"
DEFAULT_REGISTRY = "harbor.flywheel.local/flywheel"
DEFAULT_TAG = "0.1.0"
SERVE_PORT = 8080
# Settings the model server reads from the steps' ConfigMap (helm-values/flywheel-platform.yaml).
SERVER_SETTINGS = ("MLFLOW_TRACKING_URI", "FLYWHEEL_LAKE_URI", "AWS_ENDPOINT_URL")
# KServe's name for plain Deployments + Services ("RawDeployment" is deprecated); it must match
# the controller's mode (helm-values/kserve.yaml), Knative is not installed.
DEPLOYMENT_MODE = "Standard"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class InvalidManifest(ValueError):
    """The manifest would be refused by the API server (or silently lose a field)."""


def image_tag() -> str:
    """The tag of the project's images (``FLYWHEEL_IMAGE_TAG``; CI sets the release)."""
    return os.environ.get("FLYWHEEL_IMAGE_TAG", DEFAULT_TAG)


def serve_image() -> str:
    """The serving image built from ``images/serve`` (``FLYWHEEL_SERVE_IMAGE`` overrides)."""
    return os.environ.get("FLYWHEEL_SERVE_IMAGE") or f"{DEFAULT_REGISTRY}/serve:{image_tag()}"


def service_name(model_name: str) -> str:
    """A DNS-1035 label for the service: lower case, dashes, starts with a letter."""
    name = _DNS_LABEL.sub("-", model_name.lower()).strip("-") or "model"
    if not name[0].isalpha():
        name = f"m-{name}"
    return name[:45]


@dataclass(frozen=True)
class ServingOptions:
    """What a deployment may tune; the defaults fit the small digits CNN."""

    namespace: str = "flywheel"
    image: str = field(default_factory=serve_image)
    storage_secret: str = "flywheel-s3"
    tracking_secret: str = "flywheel-mlflow"
    image_pull_secret: str = "harbor-pull"
    config_map: str = "flywheel-config"
    service_account: str | None = None
    min_replicas: int = 1
    max_replicas: int = 3
    canary_traffic_percent: int | None = None
    cpu_request: str = "100m"
    memory_request: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"

    @classmethod
    def from_env(cls, **overrides: Any) -> ServingOptions:
        """Options from ``FLYWHEEL_SERVE_*`` environment variables, then ``overrides``."""
        env: dict[str, Any] = {}
        for name, var in (
            ("namespace", "FLYWHEEL_SERVE_NAMESPACE"),
            ("storage_secret", "FLYWHEEL_S3_SECRET"),
            ("tracking_secret", "FLYWHEEL_MLFLOW_SECRET"),
            ("image_pull_secret", "FLYWHEEL_IMAGE_PULL_SECRET"),
            ("config_map", "FLYWHEEL_CONFIG_MAP"),
            ("service_account", "FLYWHEEL_SERVE_SERVICE_ACCOUNT"),
        ):
            if os.environ.get(var):
                env[name] = os.environ[var]
        return cls(**{**env, **{k: v for k, v in overrides.items() if v is not None}})


def render_inference_service(
    model_name: str, model_version: str, options: ServingOptions | None = None
) -> dict[str, Any]:
    """The InferenceService serving ``models:/<model_name>/<model_version>``."""
    opts = options or ServingOptions()
    if opts.canary_traffic_percent is not None and not 0 <= opts.canary_traffic_percent <= 100:
        raise InvalidManifest(f"canary traffic {opts.canary_traffic_percent}% is not in 0..100")
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": SERVE_PORT},
        "periodSeconds": 5,
        "failureThreshold": 3,
        "timeoutSeconds": 2,
    }
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": opts.image,
        "command": ["python", "-m", "ml_tasks.serve"],
        "args": ["--model-uri", f"models:/{model_name}/{model_version}"],
        "ports": [{"containerPort": SERVE_PORT, "name": "http1", "protocol": "TCP"}],
        "env": [
            {"name": "FLYWHEEL_MODEL_NAME", "value": model_name},
            {"name": "FLYWHEEL_MODEL_VERSION", "value": str(model_version)},
            # The model is read through MLflow; a read-only root needs a writable cache.
            {"name": "HOME", "value": "/tmp"},
            # Probes reach the pod's address, not its loopback.
            {"name": "FLYWHEEL_SERVE_HOST", "value": "0.0.0.0"},
            # Where the model is and where sampled inputs go: without these the server stops
            # at start (no registered model in an empty local store) or keeps inputs in the pod.
            *(
                {
                    "name": key,
                    "valueFrom": {"configMapKeyRef": {"name": opts.config_map, "key": key}},
                }
                for key in SERVER_SETTINGS
            ),
        ],
        "envFrom": [
            {"secretRef": {"name": opts.tracking_secret}},
            {"secretRef": {"name": opts.storage_secret}},
        ],
        "resources": {
            "requests": {"cpu": opts.cpu_request, "memory": opts.memory_request},
            "limits": {"cpu": opts.cpu_limit, "memory": opts.memory_limit},
        },
        "readinessProbe": probe,
        "livenessProbe": {
            **probe,
            "httpGet": {"path": "/v2/health/live", "port": SERVE_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    predictor: dict[str, Any] = {
        "minReplicas": opts.min_replicas,
        "maxReplicas": opts.max_replicas,
        "imagePullSecrets": [{"name": opts.image_pull_secret}],
        "securityContext": {"runAsNonRoot": True, "fsGroup": 1000},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}],
    }
    if opts.service_account:
        predictor["serviceAccountName"] = opts.service_account
    if opts.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = opts.canary_traffic_percent
    name = service_name(model_name)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "flywheel"},
            "annotations": {
                "flywheel.io/model-name": model_name,
                "flywheel.io/model-version": str(model_version),
                "serving.kserve.io/deploymentMode": DEPLOYMENT_MODE,
            },
        },
        "spec": {"predictor": predictor},
    }


def to_yaml(manifest: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(manifest), sort_keys=False)


# --- validation ------------------------------------------------------------------------------


def schemas_dir() -> Path:
    """``FLYWHEEL_SCHEMAS_DIR``, else the schemas vendored in the package: they travel with the
    code (a clone, the steps image), whatever ``FLYWHEEL_REPO`` points at."""
    if env := os.environ.get("FLYWHEEL_SCHEMAS_DIR"):
        return Path(env)
    return Path(__file__).resolve().parent / "schemas"


@lru_cache(maxsize=4)
def _load_schema(path: Path) -> dict[str, Any]:
    # The CRD is 1.9 MB of YAML: the C loader reads it ~4x faster than the pure-Python one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        crd = yaml.load(fh, Loader=loader)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1beta1":
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise InvalidManifest(f"{path} has no v1beta1 version")


def crd_schema(path: Path | None = None) -> dict[str, Any]:
    """The v1beta1 openAPIV3Schema of KServe's InferenceService CRD."""
    path = path or schemas_dir() / CRD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the KServe CRD schema is missing: {path} (it ships in ml_tasks/serving/schemas/; "
            f"FLYWHEEL_SCHEMAS_DIR, when set, must name a folder that holds {CRD_FILE})"
        )
    return _load_schema(path.resolve())


def undeclared_fields(value: Any, schema: Mapping[str, Any], where: str = "") -> Iterator[str]:
    """Paths in ``value`` that ``schema`` does not declare (objects with ``properties`` and no
    ``x-kubernetes-preserve-unknown-fields`` are closed, as the API server's pruning treats
    them)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if props is not None and key in props:
                yield from undeclared_fields(item, props[key], path)
            elif isinstance(extra, dict):
                yield from undeclared_fields(item, extra, path)
            elif props is not None:
                yield path
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from undeclared_fields(item, schema["items"], f"{where}[{i}]")


def validate_inference_service(
    manifest: Mapping[str, Any], schema_path: Path | None = None
) -> None:
    """Raise :class:`InvalidManifest` listing every problem; return quietly when it is valid."""
    import jsonschema

    schema = crd_schema(schema_path)
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(
            validator.iter_errors(dict(manifest)), key=lambda e: list(e.absolute_path)
        )
    ]
    problems += [
        f"{path}: field not declared by the CRD"
        for path in undeclared_fields(dict(manifest), schema)
    ]
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != "InferenceService":
        problems.append(f"expected apiVersion {API_VERSION} and kind InferenceService")
    if problems:
        raise InvalidManifest("invalid InferenceService:\n  - " + "\n  - ".join(problems))
