"""The names step pods use on a cluster: the steps image, its pull secret, Secrets, ConfigMap.

The ``kubernetes`` backend's pods and the Kubeflow pipelines' components run the same image with
the same settings and credentials; both read these, so a cluster is configured once, by
environment variable (an empty one counts as unset).
"""

from __future__ import annotations

import os


def env_or(name: str, default: str) -> str:
    return os.environ.get(name) or default


def steps_image() -> str:
    """``FLYWHEEL_STEPS_IMAGE``, else the steps image in Harbor at ``FLYWHEEL_IMAGE_TAG``."""
    tag = env_or("FLYWHEEL_IMAGE_TAG", "0.1.0")
    return env_or("FLYWHEEL_STEPS_IMAGE", f"harbor.flywheel.local/flywheel/steps:{tag}")


def image_pull_secret() -> str:
    return env_or("FLYWHEEL_IMAGE_PULL_SECRET", "harbor-pull")


def mlflow_secret() -> str:
    return env_or("FLYWHEEL_MLFLOW_SECRET", "flywheel-mlflow")


def s3_secret() -> str:
    return env_or("FLYWHEEL_S3_SECRET", "flywheel-s3")


def config_map() -> str:
    return env_or("FLYWHEEL_CONFIG_MAP", "flywheel-config")
