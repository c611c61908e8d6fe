"""Building the images: the Python base (debootstrap, once per machine), the shared locked
environment (once per lock and base), then each image's code layers."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.images.engine import (
    REPO,
    STORAGE,
    buildah,
    docker_available,
    ensure_tools,
    image_exists,
    log,
    run,
)
from tools.images.tags import git, labels, local_ref, revision, venv_tag

BASE_IMAGE = "localhost/flywheel/python-base:bookworm-py3.11"
DOCKER_PYTHON_IMAGE = "python:3.11.7-slim-bookworm"
AIRFLOW_IMAGE = "apache/airflow:slim-3.3.2-python3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGES = ("steps", "serve", "airflow")


def ensure_base() -> str:
    """The bookworm + Python 3.11 base image (debootstrap minbase), built once per machine."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    ensure_tools()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flywheel-base-") as tmp:
        root = Path(tmp) / "root"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm",
                str(root),
                "http://deb.debian.org/debian",
            ],
            stdout=subprocess.DEVNULL,
        )
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):  # not part of an image
            for entry in (root / sub).glob("*"):
                if entry.is_file():
                    entry.unlink()
        container = buildah("from", "scratch").stdout.strip()
        try:
            mount = buildah("mount", container).stdout.strip()
            # Device nodes cannot be created in the container's file system: leave them out.
            pack = ["tar", "-C", str(root), "--exclude=./dev/*", "--exclude=./proc/*"]
            pack += ["--exclude=./sys/*", "-cf", "-", "."]
            with subprocess.Popen(pack, stdout=subprocess.PIPE) as tar:
                subprocess.run(["tar", "-C", mount, "-xf", "-"], stdin=tar.stdout, check=True)
            if tar.returncode != 0:
                raise RuntimeError(f"copying {root} into the base image failed")
            buildah("umount", container)
            buildah("config", "--cmd", "python3", "--env", "LANG=C.UTF-8", container)
            buildah("commit", "--rm", container, BASE_IMAGE)
        except BaseException:
            buildah("rm", container, check=False)
            raise
    log(f"base image {BASE_IMAGE} made in {time.monotonic() - started:.0f} s")
    return BASE_IMAGE


@dataclass(frozen=True)
class Built:
    name: str
    ref: str
    seconds: float


def pip_build_args() -> dict[str, str]:
    """Where the torch CPU wheel comes from: a local wheel folder if pip has one, else its index."""
    links = os.environ.get("PIP_FIND_LINKS", "")
    if links and Path(links).is_dir() and not docker_available():
        return {"PIP_FIND_LINKS": links}
    return {"PIP_EXTRA_INDEX_URL": os.environ.get("PIP_EXTRA_INDEX_URL") or TORCH_CPU_INDEX}


def build_image(
    dockerfile: str, ref: str, build_args: Mapping[str, str], image_labels: Mapping[str, str]
) -> None:
    """One ``bud``/``build`` from the repository root, with layer caching."""
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    args += [f"--label={k}={v}" for k, v in image_labels.items()]
    if docker_available():
        run(["docker", "build", "-f", dockerfile, "-t", ref, *args, "."], cwd=REPO)
        return
    volumes = []
    if CA_BUNDLE.exists():  # the package index is reached through the host's CA bundle
        volumes.append(f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro")
    if links := build_args.get("PIP_FIND_LINKS"):
        volumes.append(f"--volume={links}:{links}:ro")
    run(
        [
            "buildah",
            *STORAGE,
            "bud",
            "--layers",
            "--force-rm",  # a failed or killed build leaves no working containers
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--format",
            "docker",
            *volumes,
            "-f",
            dockerfile,
            "-t",
            ref,
            *args,
            ".",
        ],
        cwd=REPO,
    )


def ensure_venv() -> str:
    """The shared locked-environment image steps and serve are built FROM (built once)."""
    python_image = DOCKER_PYTHON_IMAGE if docker_available() else ensure_base()
    ref = local_ref("venv", venv_tag(python_image))
    if image_exists(ref):
        return ref
    started = time.monotonic()
    build_image(
        "images/venv/Dockerfile",
        ref,
        {"PYTHON_IMAGE": python_image, **pip_build_args()},
        labels("venv"),
    )
    log(f"{ref} built in {time.monotonic() - started:.0f} s")
    return ref


def airflow_base() -> str | None:
    """The official Airflow image, or None (with the reason logged) when it cannot be pulled."""
    image = os.environ.get("AIRFLOW_IMAGE", AIRFLOW_IMAGE)
    if image_exists(image):
        return image
    pull = ["docker", "pull", image] if docker_available() else ["buildah", *STORAGE, "pull", image]
    done = subprocess.run(pull, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return image
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    log(f"airflow: skipped, {image} cannot be pulled here ({last}); set AIRFLOW_IMAGE to a mirror")
    return None


def remove_older_tags(ref: str) -> None:
    """Untag the image's other revisions: each holds a few MB of code; the layer cache (the
    untagged intermediate images) and the shared venv image stay."""
    if docker_available():
        return
    repository = ref.rsplit(":", 1)[0]
    listed = buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split()
    for other in listed:
        if other.rsplit(":", 1)[0] == repository and other != ref:
            buildah("rmi", other, check=False)


def build(names: Sequence[str] = IMAGES) -> list[Built]:
    """Build ``names``; returns what was built, with the seconds each took."""
    if not docker_available():
        ensure_tools()
    built = []
    for name in names:
        started = time.monotonic()
        tag = revision(name)
        args = {
            "FLYWHEEL_CODE_REVISION": git("rev-parse", "HEAD")
            + ("-dirty" if tag.endswith("-dirty") else "")
        }
        if name in ("steps", "serve"):
            args["VENV_IMAGE"] = ensure_venv()
        elif name == "airflow":
            base = airflow_base()
            if base is None:
                continue
            args.update({"AIRFLOW_IMAGE": base, **pip_build_args()})
        else:
            raise SystemExit(f"unknown image {name!r}: expected one of {', '.join(IMAGES)}")
        ref = local_ref(name, tag)
        build_image(f"images/{name}/Dockerfile", ref, args, labels(name))
        remove_older_tags(ref)
        built.append(Built(name, ref, time.monotonic() - started))
        log(f"{ref} built in {built[-1].seconds:.0f} s")
    return built
