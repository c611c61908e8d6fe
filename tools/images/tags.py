"""What an image is called: its tag (the git revision, ``-dirty`` when its inputs changed), its
local reference and its OCI labels."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess

from tools.images.engine import REPO, docker_available

# What each image's build reads besides its Dockerfile: a change elsewhere does not make the
# tag "-dirty".
INPUTS = {
    "venv": ("requirements/steps.lock",),
    "steps": (
        "ml_tasks",
        "params.yaml",
        "dvc.yaml",
        "pyproject.toml",
        ".dvcignore",
        ".dvc",
        "data",
    ),
    "serve": ("ml_tasks", "params.yaml"),
    "airflow": ("requirements/orchestrator.lock", "dags", "plugins", "ml_tasks"),
}


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def revision(name: str) -> str:
    """The tag: the commit, plus ``-dirty`` when the image's inputs differ from it."""
    commit = git("rev-parse", "--short=12", "HEAD")
    paths = [f"images/{name}", ".dockerignore", *INPUTS.get(name, ())]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return f"{commit}-dirty" if changed else commit


def local_ref(name: str, tag: str) -> str:
    return (
        f"localhost/flywheel/{name}:{tag}" if not docker_available() else f"flywheel/{name}:{tag}"
    )


def labels(name: str) -> dict[str, str]:
    """OCI labels: where the source is, which revision, when built."""
    try:
        source = git("remote", "get-url", "origin")
    except subprocess.CalledProcessError:
        source = os.environ.get("FLYWHEEL_IMAGE_SOURCE", f"git+file://{REPO}")
    return {
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.revision": git("rev-parse", "HEAD"),
        "org.opencontainers.image.created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.title": f"flywheel-{name}",
    }


def venv_tag(python_image: str) -> str:
    """The shared environment's tag: a hash of its Dockerfile, the lock and the base."""
    digest = hashlib.sha256(python_image.encode())
    for path in ("images/venv/Dockerfile", "requirements/steps.lock"):
        digest.update((REPO / path).read_bytes())
    return digest.hexdigest()[:12]
