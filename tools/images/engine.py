"""The image engine: Docker where a daemon answers, else buildah (overlay storage), and the
Debian packages the buildah path needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# vfs copies every layer whole (a steps build filled 35+ GB here); overlay shares them.
STORAGE = ("--storage-driver", "overlay")
TOOLS = {"buildah": "buildah", "docker-registry": "docker-registry", "debootstrap": "debootstrap"}


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``command``, echoing it; a failure raises CalledProcessError naming it."""
    log("$ " + " ".join(command))
    return subprocess.run(list(command), check=True, text=True, **kwargs)  # type: ignore[call-overload]


def storage(store: Path | None = None) -> list[str]:
    """buildah's storage options: the machine's image store, or a separate one under ``store``
    (a pull into an empty store fetches every layer from the registry, as a node does)."""
    if store is None:
        return list(STORAGE)
    return [*STORAGE, "--root", str(store / "storage"), "--runroot", str(store / "run")]


def buildah(
    *args: str, check: bool = True, store: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A quiet buildah call with the overlay driver; its output is returned, not printed."""
    return subprocess.run(
        ["buildah", *storage(store), *args], check=check, text=True, capture_output=True
    )


def ensure_tools(names: Sequence[str] = tuple(TOOLS)) -> None:
    """Install the missing Debian packages (CI runs as root); does nothing when all are there."""
    missing = [TOOLS[n] for n in names if shutil.which(n) is None]
    if not missing:
        return
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run([*apt, "update", "-qq"], env=env)
    run([*apt, "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def docker_available() -> bool:
    """A Docker daemon that answers: a ``docker`` client alone (as here) builds nothing."""
    if os.environ.get("FLYWHEEL_IMAGE_ENGINE") == "buildah" or shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    return probe.returncode == 0


def image_exists(ref: str) -> bool:
    if docker_available():
        probe = ["docker", "image", "inspect", ref]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    return buildah("inspect", "--type", "image", ref, check=False).returncode == 0
