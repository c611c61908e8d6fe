"""A PostgreSQL server of its own for the tests and the local stack (Optuna's shared storage).

Debian's ``postgresql`` package, installed with ``apt-get`` when its ``initdb`` is missing
(never assumed to be there), a cluster in a data folder of its own, owned by and started as the
``postgres`` user, listening on 127.0.0.1 only (no Unix socket outside the folder), with a
generated password (scram-sha-256; ``trust`` nowhere)::

    python -m tools.postgres start DIR [--port 5432]   # prints the SQLAlchemy URL
    python -m tools.postgres stop DIR
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "postgres"
DATABASE = "optuna"


def bin_dir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<major>/bin`` with ``initdb``, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def ensure_installed() -> Path:
    """Install Debian's ``postgresql`` when missing (needs root, as in CI); returns its bin."""
    if (found := bin_dir()) is not None:
        return found
    if os.geteuid() != 0:
        raise SystemExit("PostgreSQL is not installed: run `sudo apt-get install -y postgresql`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        check=True,
        env=env,
    )
    found = bin_dir()
    if found is None:
        raise SystemExit("apt-get installed postgresql but no initdb under /usr/lib/postgresql")
    return found


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", USER, "--", *command]
    return command  # already an unprivileged user: run as ourselves


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, USER, USER)


def url_file(data_dir: Path) -> Path:
    return data_dir / "flywheel-url"


def start(data_dir: Path, port: int) -> str:
    """Start (creating on first use) the cluster in ``data_dir``; returns its URL."""
    binaries = ensure_installed()
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster = data_dir / "cluster"
    if not url_file(data_dir).exists():
        password = secrets.token_urlsafe(18)
        _own(data_dir)
        data_dir.chmod(0o700)
        pwfile = data_dir / "pwfile"
        pwfile.write_text(password + "\n")
        _own(pwfile)
        done = subprocess.run(
            _as_postgres(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(cluster),
                    "-U",
                    USER,
                    "--pwfile",
                    str(pwfile),
                    "--auth",
                    "scram-sha-256",
                    "-E",
                    "UTF8",
                ]
            ),
            capture_output=True,
            text=True,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(
                f"initdb failed in {cluster} (the {USER} user must reach it: every parent "
                f"folder traversable): {done.stderr.strip()}"
            )
        url = f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{{port}}/{DATABASE}"
        url_file(data_dir).write_text(url)
        url_file(data_dir).chmod(0o600)
        created = True
    else:
        created = False
    done = subprocess.run(
        _as_postgres(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(cluster),
                "-l",
                str(data_dir / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {data_dir}",
                "start",
            ]
        ),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        log_path = data_dir / "server.log"
        log = log_path.read_text()[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port}: {done.stderr}\n{log}")
    if created:
        createdb = [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER]
        subprocess.run(
            _as_postgres([*createdb, DATABASE]),
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": _password(data_dir)},
        )
    return url_file(data_dir).read_text().replace("{port}", str(port))


def _password(data_dir: Path) -> str:
    text = url_file(data_dir).read_text()
    return text.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def stop(data_dir: Path) -> None:
    binaries = bin_dir()
    cluster = data_dir / "cluster"
    if binaries is None or not (cluster / "postmaster.pid").exists():
        return
    subprocess.run(
        _as_postgres([str(binaries / "pg_ctl"), "-D", str(cluster), "-m", "fast", "-w", "stop"]),
        capture_output=True,
    )


@contextmanager
def running(data_dir: Path, port: int) -> Iterator[str]:
    """A started server for the block; yields its URL and stops it after."""
    try:
        yield start(data_dir, port)
    finally:
        stop(data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.postgres", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "install"])
    parser.add_argument("data_dir", type=Path, nargs="?")
    parser.add_argument("--port", type=int, default=5432)
    args = parser.parse_args(argv)
    if args.action == "install":
        print(ensure_installed())
        return 0
    if args.data_dir is None:
        parser.error("DATA_DIR is needed")
    if args.action == "start":
        print(start(args.data_dir.resolve(), args.port))
    else:
        stop(args.data_dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
