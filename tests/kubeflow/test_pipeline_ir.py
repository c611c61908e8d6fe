"""The compiled pipeline's IR: components, images, parameters, Secrets, pull secret, caching."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

IMAGE = "registry.example:5000/team/steps:1.2.3"


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ir") / "training.yaml"
    env = {
        "PATH": "/usr/bin:/bin",
        "FLYWHEEL_STEPS_IMAGE": IMAGE,
        "FLYWHEEL_IMAGE_PULL_SECRET": "harbor-robot",
        "HOME": str(out.parent),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.pipelines", "compile", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(out.read_text()))


def test_the_chain_of_components_runs_in_the_steps_image(ir: list[dict[str, Any]]) -> None:
    spec = ir[0]
    assert spec["pipelineInfo"]["name"] == "flywheel-training"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-op", "checks-op", "train-op", "validate-op"}
    assert tasks["checks-op"]["dependentTasks"] == ["prepare-op"]
    assert set(tasks["train-op"]["dependentTasks"]) == {"prepare-op", "checks-op"}
    assert tasks["validate-op"]["dependentTasks"] == ["train-op"]
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 4
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == IMAGE
        # the image has kfp: no pip install at start, and the body calls the step functions
        program = " ".join(container["command"])
        assert "pip install" not in program
        assert "from ml_tasks.pipelines.runtime import" in program
    train = executors["exec-train-op"]["container"]
    assert train["resources"]["cpuLimit"] == 4.0
    assert "from ml_tasks.train import train" in " ".join(train["command"])


def test_parameters_are_the_training_dags(ir: list[dict[str, Any]]) -> None:
    params = ir[0]["root"]["inputDefinitions"]["parameters"]
    assert {"dataset_version", "epochs", "learning_rate", "min_improvement", "force_register"} <= (
        set(params)
    )
    assert params["force_register"]["parameterType"] == "BOOLEAN"
    assert params["epochs"]["defaultValue"] == 0  # 0: params.yaml
    # every component is told its KFP run id, for the lineage tags
    for task in ir[0]["root"]["dag"]["tasks"].values():
        value = task["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"]
        assert value == "{{$.pipeline_job_uuid}}"


def test_caching_is_off_for_every_task(ir: list[dict[str, Any]]) -> None:
    for task in ir[0]["root"]["dag"]["tasks"].values():
        assert task["cachingOptions"] == {}  # kfp writes enableCache: true when it is on


def test_secrets_and_pull_secret_are_in_the_platform_spec(ir: list[dict[str, Any]]) -> None:
    platform = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(platform) == 4
    for config in platform.values():
        assert [p["secretName"] for p in config["imagePullSecret"]] == ["harbor-robot"]
        secrets = {s["secretName"]: s for s in config["secretAsEnv"]}
        assert set(secrets) == {"flywheel-mlflow", "flywheel-s3"}
        s3_keys = {k["secretKey"] for k in secrets["flywheel-s3"]["keyToEnv"]}
        assert s3_keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        envs = {k["envVar"] for k in config["configMapAsEnv"][0]["keyToEnv"]}
        assert {"FLYWHEEL_LAKE_URI", "MLFLOW_TRACKING_URI"} <= envs


def test_platform_config_is_what_kfp_kubernetes_writes() -> None:
    """Written by hand (kfp-kubernetes is not in the lock); must match the library's output."""
    kubernetes = pytest.importorskip("kfp.kubernetes")
    from kfp import dsl

    from ml_tasks.pipelines.pipeline import CONFIG_KEYS, ImageSettings, kubernetes_config

    s = ImageSettings()

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def noop() -> None:
        pass

    @dsl.pipeline
    def probe() -> None:
        task = noop()
        kubernetes.use_secret_as_env(
            task,
            s.mlflow_secret,
            {
                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
            },
        )
        kubernetes.use_secret_as_env(
            task,
            s.s3_secret,
            {
                "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            },
        )
        kubernetes.set_image_pull_secrets(task, [s.pull_secret])
        kubernetes.use_config_map_as_env(
            task, s.config_map, {k: k for k in CONFIG_KEYS}, optional=True
        )
        assert task.platform_config["kubernetes"] == kubernetes_config(s)


def test_one_step_pipeline_takes_the_arguments(tmp_path: Path) -> None:
    from ml_tasks.pipelines.pipeline import compile_pipeline, step_pipeline

    spec = next(
        yaml.safe_load_all(
            compile_pipeline(step_pipeline("train"), tmp_path / "s.yaml").read_text()
        )
    )
    assert spec["pipelineInfo"]["name"] == "flywheel-step-train"
    assert spec["root"]["inputDefinitions"]["parameters"]["arguments"]["parameterType"] == "LIST"
    assert list(spec["root"]["dag"]["tasks"]) == ["step-op"]
