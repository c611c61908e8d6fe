"""Every values file against the vendored copy of its chart, as ``helm install`` would check it,
plus the chart-specific rules that the charts enforce in templates rather than schemas."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.helm.charts import (
    HELM_VALUES,
    REPO,
    Release,
    check_values,
    commented_key_problems,
    key_paths,
    load_yaml,
    merged,
    misspell,
    releases,
)

RELEASES = {r.release: r for r in releases()}


def values_of(name: str) -> dict[str, Any]:
    data = load_yaml(RELEASES[name].values_path)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("release", list(RELEASES.values()), ids=list(RELEASES))
def test_values_fit_the_pinned_chart(release: Release) -> None:
    assert release.values_path.is_file(), release.values
    assert check_values(release, values_of(release.release)) == []
    assert commented_key_problems(release) == []
    chart_yaml = release.chart_dir / "Chart.yaml"
    if chart_yaml.is_file():  # the vendored files are the pinned version's
        assert str(load_yaml(chart_yaml)["version"]) == release.version


@pytest.mark.parametrize("release", list(RELEASES.values()), ids=list(RELEASES))
def test_a_misspelt_key_anywhere_is_caught(release: Release) -> None:
    """Each key the file sets, misspelt in turn, must fail the check (free-form maps aside)."""
    values = values_of(release.release)
    checked = 0
    for location, path in key_paths(values):
        if any(path == f or path.startswith(f"{f}.") for f in release.free_form):
            continue
        problems = check_values(release, misspell(values, location))
        assert problems, f"{release.values}: misspelling {path} went unnoticed"
        checked += 1
    assert checked >= 3


def test_every_seed_component_has_values() -> None:
    charts = {r.vendored.split("/")[-1] for r in RELEASES.values()}
    assert {
        "airflow",
        "mlflow",
        "minio",
        "label-studio",
        "kserve-resources",
        "harbor",
        "fluent-bit",
        "loki",
        "grafana",
    } <= charts
    tracked = {p.name for p in HELM_VALUES.glob("*.yaml")} - {"releases.yaml"}
    assert tracked - {r.values for r in RELEASES.values()} == {"flywheel-platform.yaml"}


# --- rules the charts enforce in templates ---------------------------------------------------


def test_mlflow_database_password_comes_from_a_secret() -> None:
    """The chart's secret.yaml ``required``s backendStore.postgres.password unless
    existingDatabaseSecret.name is set; a password in this file would be a secret in git."""
    release = RELEASES["mlflow"]
    values = merged(release.defaults(), values_of("mlflow"))
    store = values["backendStore"]
    assert store["postgres"]["enabled"]
    assert not store["postgres"]["password"]
    assert store["existingDatabaseSecret"]["name"]


def test_mlflow_database_is_deployed_by_a_release() -> None:
    """The host MLflow points at is the Service of the PostgreSQL release, with its database."""
    postgres = RELEASES["flywheel-postgresql"]
    store = values_of("mlflow")["backendStore"]["postgres"]
    assert store["host"] == f"{postgres.release}.{postgres.namespace}.svc"
    auth = values_of("flywheel-postgresql")["auth"]
    assert (auth["database"], auth["username"]) == (store["database"], store["user"])
    assert auth["existingSecret"]


def _values_text() -> str:
    return "\n".join(r.values_path.read_text() for r in RELEASES.values())


@pytest.mark.parametrize(
    ("chart", "path", "well_known"),
    [
        ("minio", "users", "console123"),
        ("airflow", "postgresql.auth.postgresPassword", "postgres"),
        ("airflow", "createUserJob.defaultUser.password", "admin"),
        ("label-studio", "postgresql.auth.password", "labelstudio"),
        ("harbor", "harborAdminPassword", "Harbor12345"),
    ],
)
def test_no_chart_default_credential_is_left_in_use(chart: str, path: str, well_known: str) -> None:
    """Each well-known default (``path``: ``well_known``) is switched off or replaced by a
    Secret."""
    name = next(r.release for r in RELEASES.values() if r.vendored.endswith(f"/{chart}"))
    release = RELEASES[name]
    values = values_of(name)
    effective = merged(release.defaults(), values)
    if chart == "minio":
        assert all(u.get("existingSecret") and not u.get("secretKey") for u in effective["users"])
    elif chart == "airflow" and path.startswith("postgresql"):
        assert effective["postgresql"]["enabled"] is False
        assert effective["data"]["metadataSecretName"]
    elif chart == "airflow":
        assert effective["createUserJob"]["enabled"] is False
    elif chart == "label-studio":
        assert effective["postgresql"]["enabled"] is False
        assert effective["global"]["pgConfig"]["password"]["secretName"]
    elif chart == "harbor":
        assert effective["existingSecretAdminPassword"]
        assert effective["existingSecretSecretKey"]


def test_label_studio_admin_has_a_username_with_its_password() -> None:
    secrets = values_of("label-studio")["global"]["extraEnvironmentSecrets"]
    assert {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD"} <= set(secrets)


def test_no_secret_value_in_any_values_file() -> None:
    """A password or token in a values file is a secret in git: each names a Secret instead."""
    for release in RELEASES.values():
        values = values_of(release.release)
        for location, path in key_paths(values):
            name = str(location[-1]).lower()
            if name.startswith("existing") or not re.search(r"(password|secretkey|token)$", name):
                continue
            parent: Any = values
            for step in location[:-1]:
                parent = parent[step]
            if "secretName" in parent:  # {secretName, secretKey}: a reference to a Secret
                continue
            value = parent[location[-1]]
            assert not isinstance(value, str) or value in {"true", "false"}, (
                f"{release.values}: {path} is set"
            )


def test_tracking_uri_uses_the_port_mlflow_listens_on() -> None:
    port = merged(RELEASES["mlflow"].defaults(), values_of("mlflow"))["service"]["port"]
    env = {e["name"]: e["value"] for e in values_of("airflow")["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow.flywheel.svc:{port}"
    platform = list(yaml.safe_load_all((HELM_VALUES / "flywheel-platform.yaml").read_text()))
    config = next(o for o in platform if o["kind"] == "ConfigMap")
    assert config["data"]["MLFLOW_TRACKING_URI"] == f"http://mlflow.flywheel.svc:{port}"


def test_kserve_mode_is_the_one_the_inference_service_asks_for() -> None:
    from ml_tasks.serving.inference_service import render_inference_service

    mode = values_of("kserve")["kserve"]["controller"]["deploymentMode"]
    assert mode in {"Standard", "Knative"}  # RawDeployment / Serverless are deprecated names
    annotations = render_inference_service("digits", "7")["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == mode
    assert RELEASES["kserve"].chart.endswith("/kserve-resources")


def test_the_guide_installs_exactly_the_pinned_versions() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    commands = re.findall(r"^helm upgrade --install (?:[^\n]*\\\n)*[^\n]*", guide, flags=re.M)
    installs = {c.split()[3]: c.replace("\\\n", " ") for c in commands}
    pins = load_yaml(HELM_VALUES / "releases.yaml")
    for entry in [*pins["releases"], *pins["prerequisites"]]:
        command = installs.get(entry["release"])
        assert command, f"docs/deploy.md installs no {entry['release']}"
        words = command.split()
        assert entry["chart"] in words, command
        if "git" not in entry:
            assert f"--version {entry['version']}" in " ".join(words), command
        assert f"--namespace {entry['namespace']}" in " ".join(words), command
        if "values" in entry:
            assert f"helm-values/{entry['values']}" in words, command
    airflow = next(e for e in pins["releases"] if e["release"] == "airflow")
    assert airflow["git"]["commit"] in guide


def test_kubeflow_pipelines_overlay_sets_only_keys_kfp_has() -> None:
    pins = load_yaml(HELM_VALUES / "releases.yaml")["kustomize"]
    (kfp,) = pins
    overlay = HELM_VALUES / kfp["overlay"]
    kustomization = load_yaml(overlay / "kustomization.yaml")
    (resource,) = kustomization["resources"]
    assert resource.endswith(f"?ref={kfp['ref']}")
    vendored = HELM_VALUES / kfp["vendored"]
    upstream = load_yaml(vendored / "base/installs/generic/pipeline-install-config.yaml")
    assert upstream["data"]["appVersion"] == kfp["ref"]
    for patch in kustomization["patches"]:
        ours = load_yaml(overlay / patch["path"])
        assert ours["metadata"]["name"] == upstream["metadata"]["name"]
        assert set(ours["data"]) - set(upstream["data"]) == set()


def test_airflow_runs_the_code_its_image_bakes() -> None:
    """The image (images/airflow) holds dags/, plugins/ and ml_tasks and points PYTHONPATH and
    the plugins folder at them; values that override either, or git-sync dags/ alone, would
    run DAGs beside plugins of another revision, or none."""
    values = values_of("airflow")
    env = {e["name"] for e in values.get("env", [])}
    assert "PYTHONPATH" not in env
    assert "plugins_folder" not in values.get("config", {}).get("core", {})
    assert values["dags"]["gitSync"]["enabled"] is False
    dockerfile = (REPO / "images" / "airflow" / "Dockerfile").read_text()
    for baked in ("COPY dags/", "COPY plugins/", "ml_tasks", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        assert baked in dockerfile, baked
