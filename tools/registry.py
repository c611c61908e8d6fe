"""The local stack's container registry: the CNCF distribution registry (Debian's
``docker-registry``, what Harbor itself is built on) on 127.0.0.1, so ``make push`` and a
pull are tried for real on one machine.

``python -m tools.registry serve ROOT PORT`` runs it in the foreground; the local stack and the
image tests start it with :func:`registry_command` / :func:`running_registry`. Images are kept
in ``ROOT/data`` and survive restarts. Plain HTTP on loopback only: pushes use
``--tls-verify=false`` for 127.0.0.1 (``tools.images.Registry.insecure``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.local_servers import stop_process, wait_for_http

DEFAULT_PORT = 5050  # the stack's MLflow has 5000
PORT_VARIABLE = "FLYWHEEL_STACK_REGISTRY_PORT"


def write_config(root: Path, port: int) -> Path:
    """The registry's configuration: storage under ``root``, listening on 127.0.0.1 only."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )
    return config


def registry_command(root: Path, port: int) -> list[str]:
    """The command that serves the registry (``docker-registry`` from ``make image-tools``)."""
    return ["docker-registry", "serve", str(write_config(root, port))]


def wait_until_up(port: int, timeout: float = 30.0) -> None:
    """Wait for the registry's API root (``/v2/``) to answer."""
    try:
        wait_for_http(
            f"http://127.0.0.1:{port}/v2/", timeout, ready=lambda r: r.status == 200, every=0.2
        )
    except TimeoutError:
        raise TimeoutError(f"no registry answered on 127.0.0.1:{port}") from None


@contextmanager
def running_registry(root: Path, port: int) -> Iterator[str]:
    """A registry for the duration of the block; yields its ``host:port``."""
    command = registry_command(root, port)  # creates root
    log = (root / "registry.log").open("ab")
    with log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as proc:
        try:
            wait_until_up(port)
            yield f"127.0.0.1:{port}"
        finally:
            stop_process(proc, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.registry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the registry in the foreground")
    serve.add_argument("root", type=Path)
    serve.add_argument(
        "port", type=int, nargs="?", default=int(os.environ.get(PORT_VARIABLE, DEFAULT_PORT))
    )
    args = parser.parse_args(argv)
    command = registry_command(args.root, args.port)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
