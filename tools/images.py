"""Build, push and run Flywheel's container images: with Docker where a daemon answers, with
buildah (no daemon, no Docker Hub) where it does not.

``python -m tools.images COMMAND`` (``make images``, ``make push`` and the image tests call it):

- ``tools``: install the Debian packages the buildah path needs (buildah, docker-registry,
  debootstrap) when one is missing, after ``apt-get update``.
- ``base``: the Python base image, made once per machine with debootstrap, for the
  Dockerfiles' ``FROM ${PYTHON_IMAGE}`` (the official one is on Docker Hub, out of reach here).
- ``build [NAME...]``: the images (default ``steps serve airflow``), tagged with the git
  revision and labelled (OCI source, revision, created). ``airflow`` starts from the official
  Airflow image: it is skipped, saying why, where that image cannot be pulled.
- ``push [NAME...]``: to ``$REGISTRY/$PROJECT`` as ``$ROBOT_USER`` / ``$ROBOT_TOKEN``: the
  environment, never the repository, holds them.
- ``refs``: the references the images get, as the kubernetes backend reads them.

``steps`` and ``serve`` are ``FROM`` one shared image, ``images/venv`` (the locked steps
environment), built once per lock and base: a code-only change rebuilds the code layers only.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# vfs copies every layer whole (a steps build filled 35+ GB here); overlay shares them.
STORAGE = ("--storage-driver", "overlay")
TOOLS = {"buildah": "buildah", "docker-registry": "docker-registry", "debootstrap": "debootstrap"}
BASE_IMAGE = "localhost/flywheel/python-base:bookworm-py3.11"
DOCKER_PYTHON_IMAGE = "python:3.11.7-slim-bookworm"
AIRFLOW_IMAGE = "apache/airflow:slim-3.3.2-python3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGES = ("steps", "serve", "airflow")
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


# --- tools and engine ---------------------------------------------------------------------------


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


# --- names, tags and labels ---------------------------------------------------------------------


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


# --- building -----------------------------------------------------------------------------------


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


# --- registry -----------------------------------------------------------------------------------


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


# --- running a command in an image as a pod runs it ---------------------------------------------


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


# --- CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.images", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="install buildah, docker-registry, debootstrap when missing")
    sub.add_parser("base", help="make the Python base image once (debootstrap)")
    for command in ("build", "push"):
        p = sub.add_parser(command, help=f"{command} the images (default: all)")
        p.add_argument("names", nargs="*", default=list(IMAGES), help=", ".join(IMAGES))
    args = parser.parse_args(argv)
    if unknown := set(getattr(args, "names", ())) - set(IMAGES):
        parser.error(f"unknown image {', '.join(sorted(unknown))}: expected {', '.join(IMAGES)}")
    if args.command == "tools":
        ensure_tools()
    elif args.command == "base":
        print(ensure_base())
    elif args.command == "build":
        for item in build(args.names):
            print(f"{item.ref}\t{item.seconds:.0f} s")
    elif args.command == "push":
        registry = Registry.from_env()
        for name in args.names:
            local = local_ref(name, revision(name))
            if not image_exists(local):
                if name == "airflow" and airflow_base() is None:
                    continue
                raise SystemExit(f"{local} is not built: run `make images` first")
            push(local, registry.ref(name, revision(name)), registry)
            print(registry.ref(name, revision(name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
