"""Running a command in an image as a pod runs it: a working container, a user, an exact
environment, volumes, and what the run wrote outside them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tools.images.engine import buildah, storage


@contextmanager
def container(image: str, store: Path | None = None) -> Iterator[str]:
    """A working container of ``image`` (``podman run`` fails here; ``buildah run`` works)."""
    name = buildah("from", "--pull-never", image, store=store).stdout.strip()
    try:
        yield name
    finally:
        buildah("rm", name, check=False, store=store)


def remove_store(store: Path) -> None:
    """Delete a separate image store: its containers, images and folder."""
    buildah("rm", "--all", check=False, store=store)
    buildah("rmi", "--all", "--force", check=False, store=store)
    subprocess.run(
        ["umount", "--recursive", "--lazy", str(store / "storage" / "overlay")],
        capture_output=True,
        check=False,
    )
    shutil.rmtree(store, ignore_errors=True)


def run_command(
    name: str,
    argv: Sequence[str],
    *,
    user: str,
    env: Mapping[str, str],
    volumes: Mapping[Path, str],
    workdir: str | None = None,
    store: Path | None = None,
    **kwargs: object,
) -> subprocess.Popen[str]:
    """Start ``argv`` in container ``name`` as ``user`` with exactly ``env`` (added to the
    image's) and ``volumes`` (host folder -> mount path), on the host's network."""
    command = ["buildah", *storage(store), "run", "--isolation", "chroot", "--network", "host"]
    command += ["--user", user]
    if workdir:
        command += ["--workingdir", workdir]
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    for host, mount in volumes.items():
        command += ["--volume", f"{host}:{mount}:rw"]
    return subprocess.Popen([*command, name, "--", *argv], text=True, **kwargs)  # type: ignore[call-overload]


def written_outside(name: str, allowed: Sequence[str], store: Path | None = None) -> list[str]:
    """Paths a run wrote to the container's own file system, besides ``allowed`` mount points:
    with ``readOnlyRootFilesystem`` each would have failed in the pod."""
    mount = buildah("mount", name, store=store).stdout.strip()  # .../overlay/<layer>/merged
    upper = Path(mount).parent / "diff"
    # buildah run's own, while a command runs: /run and /run/.containerenv
    allowed = [*allowed, "/run", "/run/.containerenv"]
    found = []
    for path in upper.rglob("*"):
        rel = "/" + path.relative_to(upper).as_posix()
        if any(rel == a or a.startswith(rel + "/") for a in allowed):
            continue
        if path.is_dir() and any(rel.startswith(a + "/") for a in allowed):
            continue
        found.append(rel)
    return sorted(found)
