"""The versioned image dataset: ``data/images/<class>/<content hash>.png``, tracked by DVC.

Commands (``python -m ml_tasks.dataset --help``):

- ``materialize``: make ``data/images`` match ``data/images.dvc``: pull it from the DVC remote,
  or, on a fresh clone with an empty remote, write scikit-learn's bundled digits (1,797 real
  8x8 images; deterministic, so the hash matches the committed one) and push them.
- ``synth``: write synthetic labelled images of any count and size, for scale tests.
- ``versions`` / ``as-of DATE``: the index of versions, and the version current at a date.

The library is in :mod:`ml_tasks.data` (``dvc``, ``versions``, ``synthetic``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ml_tasks.core import events
from ml_tasks.core.exit_codes import EXIT_STEP_ERROR
from ml_tasks.core.settings import Settings, load_settings
from ml_tasks.core.step import StepError
from ml_tasks.data.dvc import DVC_FILE, configure_remote, tracked_version, workspace_matches
from ml_tasks.data.synthetic import synthesize, write_digits
from ml_tasks.data.versions import add_version, count_images, read_index, version_as_of


def materialize(settings: Settings) -> dict[str, Any]:
    """Make ``data/images`` match ``data/images.dvc``, by pulling or by writing the digits."""
    recorded = tracked_version(settings)
    if recorded and workspace_matches(settings):
        return {
            "dataset_version": recorded,
            "source": "workspace",
            "images": count_images(settings.data_dir),
        }
    if recorded:
        configure_remote(settings)
        pulled = subprocess.run(
            [
                sys.executable,
                "-m",
                "dvc",
                "pull",
                "--quiet",
                "-r",
                settings.dvc_remote,
                str(DVC_FILE),
            ],
            cwd=settings.repo,
            capture_output=True,
            text=True,
        )
        if pulled.returncode == 0 and workspace_matches(settings):
            events.emit("dataset_pulled", dataset_version=recorded, remote=settings.dvc_remote)
            return {
                "dataset_version": recorded,
                "source": "dvc pull",
                "images": count_images(settings.data_dir),
            }
        events.emit(
            "dataset_pull_missed",
            level="warning",
            dataset_version=recorded,
            remote=settings.dvc_remote,
            detail=(pulled.stderr or pulled.stdout).strip()[-500:],
        )
    written = write_digits(settings.data_dir)
    entry = add_version(settings, "scikit-learn digits")
    if recorded and entry.version != recorded:
        events.emit(
            "dataset_differs_from_git",
            level="warning",
            recorded=recorded,
            dataset_version=entry.version,
            detail="the written digits differ from the committed data/images.dvc (another Pillow?)",
        )
    return {"dataset_version": entry.version, "source": "scikit-learn digits", "images": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.dataset", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "materialize", help="pull data/images from DVC, or write the digits on a fresh clone"
    )
    synth = sub.add_parser(
        "synth", help="write synthetic labelled images (scale tests, benchmarks)"
    )
    synth.add_argument(
        "--out", type=Path, required=True, help="folder to write <class>/<hash>.png into"
    )
    synth.add_argument("--count", type=int, required=True, help="how many images")
    synth.add_argument("--size", type=int, default=8, help="width and height in pixels (default 8)")
    synth.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    synth.add_argument("--seed", type=int, default=0)
    sub.add_parser("versions", help="list dataset versions, oldest first")
    as_of = sub.add_parser("as-of", help="the dataset version current at a date (ISO 8601)")
    as_of.add_argument("when", type=datetime.fromisoformat)
    args = parser.parse_args(argv)

    settings = load_settings()
    events.configure("dataset")
    try:
        if args.command == "materialize":
            out: Any = materialize(settings)
        elif args.command == "synth":
            if args.count < 0 or args.size < 4 or args.classes < 2:
                parser.error("--count must be >= 0, --size >= 4 and --classes >= 2")
            out = {
                "written": synthesize(
                    args.out, count=args.count, size=args.size, classes=args.classes, seed=args.seed
                )
            }
        elif args.command == "versions":
            out = [v.to_json() for v in read_index(settings)]
        else:
            out = version_as_of(settings, args.when).to_json()
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STEP_ERROR
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
