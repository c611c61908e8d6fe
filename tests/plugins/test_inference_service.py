"""The InferenceService the deploy renders, checked against KServe's CRD as the API server
(and ``kubectl apply --validate=strict``) would."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ml_tasks.serving.inference_service import (
    InvalidManifest,
    ServingOptions,
    crd_schema,
    render_inference_service,
    validate_inference_service,
)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    crd_schema()  # load once for the module (the CRD vendored in ml_tasks/serving/schemas/)
    return render_inference_service("digits", "7", ServingOptions(canary_traffic_percent=10))


def test_rendered_service_is_valid_and_serves_the_version(manifest: dict[str, Any]) -> None:
    validate_inference_service(manifest)
    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["command"] == ["python", "-m", "ml_tasks.serve"]
    assert container["args"] == ["--model-uri", "models:/digits/7"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {e["secretRef"]["name"] for e in container["envFrom"]} == {
        "flywheel-s3",
        "flywheel-mlflow",
    }
    assert predictor["canaryTrafficPercent"] == 10
    assert manifest["metadata"]["annotations"]["flywheel.io/model-version"] == "7"


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda m: m["spec"]["predictor"].update(canaryTrafficPercent="10"),
            "not of type 'integer'",
        ),
        (
            lambda m: m["spec"]["predictor"]["containers"][0].update(readinessprobe={}),
            "containers[0].readinessprobe: field not declared",
        ),
        (lambda m: m["spec"].update(predictr=m["spec"].pop("predictor")), "predictor"),
        (lambda m: m.update(kind="Deployment"), "kind InferenceService"),
    ],
    ids=["wrong type", "typo in a field", "missing predictor", "wrong kind"],
)
def test_broken_services_are_refused(
    manifest: dict[str, Any], break_it: Any, expected: str
) -> None:
    broken = copy.deepcopy(manifest)
    break_it(broken)
    with pytest.raises(InvalidManifest, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_inference_service(broken)


def test_out_of_range_canary_is_refused_before_rendering() -> None:
    with pytest.raises(InvalidManifest, match="canary"):
        render_inference_service("digits", "7", ServingOptions(canary_traffic_percent=120))


def test_missing_schema_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="FLYWHEEL_SCHEMAS_DIR"):
        crd_schema(tmp_path / "nope.yaml")
