"""Test set-up that needs the steps environment (torch, MLflow, DVC), run as a subprocess.

The annotation tests run in the orchestrator environment (they drive DAGs with ``dag.test()``),
so what needs the ML stack is done here: ``champion`` trains a tiny CNN on synthetic digits and
registers it as ``<model>@champion``; ``repo`` makes a throwaway git + DVC repository with a
small first dataset version; ``incoming`` writes images and sidecars the way the model service
does; ``half-ingest`` does the first half of an ingest (files + ``dvc add`` + push, no commit),
the state a crash between ``dvc push`` and ``git commit`` leaves behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def synthetic_pixels(count: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images like ``synthetic.synthesize`` (class k: a bright bar at a k-dependent place)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        label = i % 10
        image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
        row = min(max((label * size) // 10 + int(rng.integers(-1, 2)), 0), size - 1)
        if label % 2:
            image[:, row] = rng.integers(180, 256, size=size, dtype=np.uint8)
        else:
            image[row, :] = rng.integers(180, 256, size=size, dtype=np.uint8)
        image[0, 0], image[0, 1], image[0, 2] = i % 251, (i // 251) % 251, seed % 251
        images.append(image)
        labels.append(label)
    return np.stack(images), np.array(labels)


def champion(model_name: str) -> None:
    import mlflow

    from ml_tasks.model.small_champion import holdout_every_seventh, register_small_model

    x, y = synthetic_pixels(600, seed=1)
    mlflow.set_experiment("annotation-tests")
    version, history = register_small_model(
        holdout_every_seventh(x.astype(np.float32) / 255.0, y), model_name, epochs=6
    )
    print(json.dumps({"version": version, "val_accuracy": history[-1]["val_accuracy"]}))


def make_repo(path: Path, bucket: str, base_images: int) -> None:
    """A git + DVC repository like Flywheel's, with ``base_images`` images as version one."""
    from ml_tasks.core.settings import load_settings
    from ml_tasks.data.synthetic import synthesize
    from ml_tasks.data.versions import add_version

    path.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    (path / ".gitignore").write_text("/.flywheel/\n")

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)

    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "test@flywheel.local")
    run("git", "config", "user.name", "Flywheel tests")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (path / ".dvc" / "config").write_text(
        "[core]\n    autostage = false\n    remote = minio\n"
        "['remote \"local\"']\n    url = ../.flywheel/dvc-remote\n"
        f"['remote \"minio\"']\n    url = s3://{bucket}/dvc\n"
    )
    synthesize(path / "data" / "images", count=base_images, seed=7)
    settings = load_settings()
    assert settings.repo == path, (settings.repo, path)
    entry = add_version(settings, "base")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", f"dataset: base version {entry.version[:12]}")
    # A remote to push versions to (what a team's git server is), next to the checkout.
    origin = path.parent / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    run("git", "remote", "add", "origin", str(origin))
    run("git", "push", "-q", "origin", "main")


def incoming(bucket: str, count: int, seed: int, model_version: str) -> None:
    """Images + sidecars in ``incoming/<date>/``, written by the model service's own writer."""
    from ml_tasks.core.lake import open_lake
    from ml_tasks.serving.incoming import IncomingImage, write_incoming

    lake = open_lake(f"s3://{bucket}")
    pixels, labels = synthetic_pixels(count, seed=seed)
    written = []
    for image, label in zip(pixels, labels, strict=True):
        served = IncomingImage(
            source=image.astype(np.float32) / 255.0,
            prediction=str(label),
            score=0.9,
            probabilities={str(label): 0.9},
            model_name="digits",
            model_version=model_version,
            request_id=f"{seed}-{len(written)}",
            received_at=datetime.now(UTC),
        )
        written.append(write_incoming(lake, served))
    print(json.dumps(written))


def half_ingest() -> None:
    """Files + ``dvc add`` + ``dvc push`` + index, then stop: a crash before the commit."""
    from ml_tasks.annotation.decisions import apply_decisions, decide, read_annotations
    from ml_tasks.core.lake import open_lake
    from ml_tasks.core.settings import load_params, load_settings
    from ml_tasks.data.versions import add_version

    settings = load_settings()
    lake = open_lake(settings.lake_uri)
    classes = [str(c) for c in load_params(settings.params_path)["prepare"]["classes"]]
    decisions, _ = decide(read_annotations(lake), classes)
    counts = apply_decisions(settings, lake, decisions, classes)
    entry = add_version(settings, "crashed before commit")
    print(json.dumps({"dataset_version": entry.version, **counts}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("champion")
    c.add_argument("--model-name", required=True)
    r = sub.add_parser("repo")
    r.add_argument("--path", type=Path, required=True)
    r.add_argument("--bucket", required=True)
    r.add_argument("--base-images", type=int, default=20)
    i = sub.add_parser("incoming")
    i.add_argument("--bucket", required=True)
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--seed", type=int, required=True)
    i.add_argument("--model-version", default="1")
    sub.add_parser("half-ingest")
    args = parser.parse_args()
    if args.command == "champion":
        champion(args.model_name)
    elif args.command == "repo":
        make_repo(args.path, args.bucket, args.base_images)
    elif args.command == "incoming":
        incoming(args.bucket, args.count, args.seed, args.model_version)
    else:
        half_ingest()


if __name__ == "__main__":
    main()
