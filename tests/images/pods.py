"""Run a rendered pod's container from a pulled image, as the kubelet would, on this machine.

What is taken from the spec: the image, ``command`` + ``args``, the environment (``env``, with
``valueFrom`` resolved, over ``envFrom``: the ConfigMap's and the Secrets' keys from test
fixtures), the user (``runAsUser``/``runAsGroup``, else the image's ``USER``), the working
directory, and every volume mount (a fresh host folder each, owned by the pod's group as
``fsGroup`` makes it). With ``readOnlyRootFilesystem`` the run must write nothing outside those
mounts: buildah has no read-only root, so the container's own layer is checked afterwards.

What differs: the network. ``buildah run`` shares the host's (a pod has its own), so the test's
servers on 127.0.0.1 are reachable as the cluster's Services would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools import images
from tools.local_servers import stop_process

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATOR_PY = REPO / ".venvs" / "orchestrator" / "bin" / "python"


def render_step_pod(
    task_id: str,
    upstream: Mapping[str, Any],
    env: Mapping[str, str],
    dag: tuple[str, str] = ("training.py", "training"),
) -> dict[str, Any]:
    """The pod the kubernetes backend builds for ``task_id`` of ``dag`` (file, id), rendered by
    the orchestrator's interpreter (:mod:`tests.images.render_pod`)."""
    request = {"dag_file": dag[0], "dag_id": dag[1], "task_id": task_id, "upstream": upstream}
    done = subprocess.run(
        [str(ORCHESTRATOR_PY), str(Path(__file__).with_name("render_pod.py"))],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def resolve_env(
    container: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: ``envFrom`` first, ``env`` over it.

    A reference to a ConfigMap, Secret or key the fixtures lack fails here, as the pod would
    fail to start.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if ref := source.get("configMapRef"):
            env.update(config_maps[ref["name"]])
        elif ref := source.get("secretRef"):
            env.update(secrets[ref["name"]])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif ref := (item.get("valueFrom") or {}).get("configMapKeyRef"):
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
        elif ref := (item.get("valueFrom") or {}).get("secretKeyRef"):
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def image_user(image: str, store: Path) -> str:
    """The image's ``USER`` (what runs when the pod names no ``runAsUser``)."""
    info = json.loads(images.buildah("inspect", "--type", "image", image, store=store).stdout)
    return str(info["OCIv1"]["config"].get("User") or "0")


@dataclass
class PodRun:
    """A container started as its pod would start it."""

    process: subprocess.Popen[str]
    volumes: dict[str, Path]  # mount path -> host folder
    container: str
    read_only_root: bool

    def written_outside_mounts(self, store: Path) -> list[str]:
        return images.written_outside(self.container, list(self.volumes), store=store)


@contextmanager
def run_container(
    spec: Mapping[str, Any],
    pod_security: Mapping[str, Any],
    *,
    store: Path,
    workdir: Path,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    extra_args: tuple[str, ...] = (),
    env_overrides: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[PodRun]:
    """Start ``spec`` (a pod's container) from its image in ``store``; stops it on exit."""
    security = {**pod_security, **(spec.get("securityContext") or {})}
    image = spec["image"]
    user = image_user(image, store)
    if "runAsUser" in security:
        user = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
    if security.get("runAsNonRoot"):
        assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", (
            f"runAsNonRoot needs a numeric non-root user; the image says {user!r}"
        )
    group = int(pod_security.get("fsGroup", user.split(":")[-1]))
    volumes: dict[str, Path] = {}
    for mount in spec.get("volumeMounts") or []:
        folder = workdir / "volumes" / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, 0, group)
        folder.chmod(0o2775)  # fsGroup: group-owned, group-writable, setgid
        volumes[mount["mountPath"]] = folder
    env = {**resolve_env(spec, config_maps, secrets), **(env_overrides or {})}
    argv = [*(spec.get("command") or []), *(spec.get("args") or []), *extra_args]
    assert argv, "the pod's container names no command: the image's would run"
    out = (log or workdir / "container.log").open("w")
    with images.container(image, store=store) as name:
        process = images.run_command(
            name,
            argv,
            user=user,
            env=env,
            volumes={host: path for path, host in volumes.items()},
            workdir=spec.get("workingDir"),
            store=store,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield PodRun(process, volumes, name, bool(security.get("readOnlyRootFilesystem")))
        finally:
            stop_process(process)
            out.close()


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
