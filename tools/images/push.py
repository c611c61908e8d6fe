"""Pushing to and pulling from a registry project with its robot account (from the environment)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools.images.engine import STORAGE, docker_available, run, storage


@dataclass(frozen=True)
class Registry:
    """A registry project and its robot account: from the environment, never the repository."""

    host: str
    project: str
    user: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls) -> Registry:
        host, project = os.environ.get("REGISTRY"), os.environ.get("PROJECT", "flywheel")
        if not host:
            raise SystemExit("set REGISTRY (and PROJECT, ROBOT_USER, ROBOT_TOKEN): docs/deploy.md")
        return cls(host, project, os.environ.get("ROBOT_USER"), os.environ.get("ROBOT_TOKEN"))

    @property
    def insecure(self) -> bool:
        """Plain HTTP only for a registry on this machine (the local stack's)."""
        return self.host.split(":")[0] in ("127.0.0.1", "localhost")

    def ref(self, name: str, tag: str) -> str:
        return f"{self.host}/{self.project}/{name}:{tag}"


@contextmanager
def auth_file(registry: Registry) -> Iterator[list[str]]:
    """buildah's ``--authfile`` for the robot account (never on a command line ``ps`` shows)."""
    if not (registry.user and registry.token):
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="flywheel-auth-") as tmp:
        path = Path(tmp) / "auth.json"
        secret = base64.b64encode(f"{registry.user}:{registry.token}".encode()).decode()
        path.touch(mode=0o600)
        path.write_text(json.dumps({"auths": {registry.host: {"auth": secret}}}))
        yield [f"--authfile={path}"]


def push(local: str, remote: str, registry: Registry) -> None:
    """Push one image; the registry's copy is what the cluster (or a test) pulls."""
    if docker_available():
        if registry.user and registry.token:
            login = ["docker", "login", "-u", registry.user, "--password-stdin", registry.host]
            run(login, input=registry.token)
        run(["docker", "tag", local, remote])
        run(["docker", "push", remote])
        return
    tls = ["--tls-verify=false"] if registry.insecure else []
    with auth_file(registry) as auth:
        run(["buildah", *STORAGE, "push", *tls, *auth, local, f"docker://{remote}"])


def pull(remote: str, registry: Registry, store: Path | None = None) -> str:
    """Pull ``remote`` from the registry (into ``store`` if given); returns the image id."""
    if docker_available():
        run(["docker", "pull", remote])
        return remote
    tls = ["--tls-verify=false"] if registry.insecure else []
    with auth_file(registry) as auth:
        done = run(
            ["buildah", *storage(store), "pull", "--quiet", *tls, *auth, remote],
            capture_output=True,
        )
    return done.stdout.strip().splitlines()[-1]
