"""Annotation intake throughput (issue 5): images/s from the sensor firing to tasks in Label Studio.

A batch of 1,000 synthetic images (+ sidecars, as the model service stores them) waits in
``incoming/`` on a local S3 endpoint (``moto_server``); a real Label Studio (its own
virtualenv) and an embedded MLflow registry with a tiny ``champion`` serve the run. Measured:

- ``steps``: claim -> pre-annotate -> create tasks, each as the command a DAG task runs
  (``python -m ml_tasks.annotation.<step>``, fresh interpreter: imports and model loading
  included), i.e. a DAG run minus Airflow's scheduling. Target >= 200 images/s.
- ``warm``: the same three steps called in one warm process (imports paid once): what the
  loop costs per image once the fixed start-up is amortised.
- ``S3 ceiling``: the most images/s the S3 endpoint allows, whatever the rest costs: the
  requests/s it sustains for the loop's kind of call (small PUT, COPY, GET; 10 threads, as
  the steps use) divided by the S3 requests the warm run made per image (counted). On moto,
  an in-memory Python server, this bounds the loop well below what MinIO would. Both rates
  are also printed as a share of it, measured in the same run.

Baseline, measured in the same run: creating the same kind of task the naive way, one API
call per task plus one per prediction (what a first script usually does), on 100 images.
The ratio is throughput over that baseline.

``.venvs/steps/bin/python -m bench.annotation [--count 1000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.table import Row, report, row
from tools.local_servers import free_port, wait_for_http

ENVIRONMENT = "steps"
TARGET = 200.0
SPLITS: dict[str, float] = {}  # seconds per step of the warm run, printed with the table
REQUESTS: Counter[str] = Counter()  # S3 calls of the warm run, by operation
BUCKET = "bench-lake"


def train_champion(model_name: str, artifacts: Path) -> str:
    import mlflow
    import numpy as np

    from ml_tasks.model.small_champion import holdout_every_seventh, register_small_model

    rng = np.random.default_rng(0)
    y = np.arange(400) % 10
    x = rng.random((400, 8, 8), dtype=np.float32) * 0.2
    for i, label in enumerate(y):
        x[i, (label * 8) // 10, :] = 0.9
    # An experiment of its own: the default one keeps artifacts in ./mlruns, in the checkout.
    experiment = mlflow.create_experiment("bench-annotation", artifact_location=artifacts.as_uri())
    version, _ = register_small_model(
        holdout_every_seventh(x, y), model_name, epochs=3, experiment_id=experiment
    )
    return version


def put_incoming(count: int, seed: int) -> None:
    """``count`` distinct images in the lake's ``incoming/``, written as the model service does."""
    import numpy as np

    from ml_tasks.core.lake import open_lake
    from ml_tasks.serving.incoming import IncomingImage, write_incoming

    lake = open_lake(f"s3://{BUCKET}")
    rng = np.random.default_rng(seed)

    def put(i: int) -> None:
        image = rng.integers(0, 255, size=(8, 8), dtype=np.uint8)
        image[0, 0], image[0, 1], image[0, 2] = i % 251, (i // 251) % 251, seed % 251
        served = IncomingImage(
            source=image.astype(np.float32) / 255.0,
            prediction="0",
            score=0.5,
            probabilities={"0": 0.5},
            model_name="bench-digits",
            model_version="1",
            request_id=f"bench-{seed}-{i}",
            received_at=datetime.now(UTC),
        )
        write_incoming(lake, served)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def run_steps(batch: str, count: int) -> float:
    """Seconds for claim -> preannotate -> tasks as separate step commands."""
    start = time.perf_counter()
    for step, extra in (
        ("claim", ["--max-images", str(count)]),
        ("preannotate", []),
        ("tasks", []),
    ):
        subprocess.run(
            [sys.executable, "-m", f"ml_tasks.annotation.{step}", "--batch", batch, *extra],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def run_warm(batch: str, count: int) -> float:
    from ml_tasks.annotation.claim import claim_batch
    from ml_tasks.annotation.preannotate import preannotate
    from ml_tasks.annotation.tasks import create_tasks
    from ml_tasks.core import events
    from ml_tasks.core.lake import open_lake
    from ml_tasks.core.settings import load_settings

    settings = load_settings()
    events.configure("bench", stream=open(os.devnull, "w"))  # noqa: SIM115
    count_s3_requests()
    start = time.perf_counter()
    claim_batch(open_lake(settings.lake_uri), batch, count)
    claimed = time.perf_counter()
    preannotate(settings, batch, f"models:/{settings.model_name}@champion")
    predicted = time.perf_counter()
    create_tasks(settings, batch, "bench")
    done = time.perf_counter()
    SPLITS.update(claim=claimed - start, preannotate=predicted - claimed, tasks=done - predicted)
    return done - start


def count_s3_requests() -> None:
    """Count every S3 call that clients made from now on in this process do, by operation."""
    import boto3

    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None

    def seen(model: Any, **_: Any) -> None:
        REQUESTS[model.name] += 1

    boto3.DEFAULT_SESSION.events.register("before-call.s3", seen)


def s3_requests_per_second(s3: Any, count: int = 300) -> float:
    """Requests/s of small PUT, COPY and GET calls against the endpoint, 10 at a time."""
    keys = [f"rate/{i}.png" for i in range(count)]
    body = os.urandom(200)
    calls: list[Any] = [
        lambda k: s3.put_object(Bucket=BUCKET, Key=k, Body=body),
        lambda k: s3.copy_object(
            Bucket=BUCKET, Key=f"{k}.copy", CopySource={"Bucket": BUCKET, "Key": k}
        ),
        lambda k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read(),
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        for call in calls:
            list(pool.map(call, keys))
    seconds = time.perf_counter() - start
    s3.delete_objects(
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": k} for k in keys] + [{"Key": f"{k}.copy"} for k in keys]},
    )
    return len(calls) * count / seconds


def naive_tasks(url: str, token: str, count: int) -> float:
    """Seconds to create ``count`` tasks one call at a time, each with one prediction call."""
    from label_studio_sdk import LabelStudio

    from ml_tasks.annotation.tasks import LABEL, label_config

    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(
        title="bench naive", label_config=label_config([str(c) for c in range(10)])
    )
    start = time.perf_counter()
    for i in range(count):
        task = ls.tasks.create(project=project.id, data={"image": f"s3://{BUCKET}/x/{i}.png"})
        ls.predictions.create(
            task=task.id,
            model_version="naive",
            score=0.5,
            result=[
                {
                    "from_name": LABEL,
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["3"]},
                }
            ],
        )
    return time.perf_counter() - start


def run(count: int = 1000, naive_count: int = 100) -> list[Row]:
    import boto3

    from tools import label_studio_server as lss

    environment = dict(os.environ)  # restored after: the servers below die with the folder
    with tempfile.TemporaryDirectory(prefix="bench-annotation-") as tmp:
        root = Path(tmp)
        port = free_port()
        moto = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = lss.start(root / "label-studio", wait=False)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "FLYWHEEL_HOME": str(root / "home"),
                    "FLYWHEEL_LAKE_URI": f"s3://{BUCKET}",
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                    "FLYWHEEL_MODEL_NAME": "bench-digits",
                    "FLYWHEEL_DATASET": "bench",
                    "LABEL_STUDIO_URL": server.url,
                    "LABEL_STUDIO_API_KEY": server.token,
                }
            )
            wait_for_http(endpoint, 30)
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            import mlflow

            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
            train_champion("bench-digits", root / "mlartifacts")
            lss.wait_until_up(server.url, 300)
            put_incoming(count, seed=1)
            steps_seconds = run_steps("bench-steps", count)
            put_incoming(count, seed=2)
            warm_seconds = run_warm("bench-warm", count)
            s3_rate = s3_requests_per_second(s3)
            naive_seconds = naive_tasks(server.url, server.token, naive_count)
        finally:
            lss.stop_pid(server.pid)
            moto.terminate()
            moto.wait(timeout=10)
            os.environ.clear()
            os.environ.update(environment)
    baseline = naive_count / naive_seconds
    steps_rate, warm_rate = count / steps_seconds, count / warm_seconds
    per_image = sum(REQUESTS.values()) / count
    ceiling = s3_rate / per_image
    name = "annotation intake"
    return [
        row(
            name,
            f"images/s, sensor fired -> {count} tasks (step commands)",
            steps_rate,
            baseline,
            f">= {TARGET:.0f} images/s",
            steps_rate >= TARGET,
        ),
        row(
            name,
            f"images/s, sensor fired -> {count} tasks (warm process)",
            warm_rate,
            baseline,
            f">= {TARGET:.0f} images/s",
            warm_rate >= TARGET,
        ),
        row(
            name,
            f"S3 ceiling: {s3_rate:.0f} req/s / {per_image:.2f} S3 requests per image",
            ceiling,
            None,
            f">= {TARGET:.0f} images/s",
            ceiling >= TARGET,
        ),
        # Below the target, the ceiling is the figure to hold the loop to: the share of it used.
        *(
            row(name, f"images/s ({kind}) vs the S3 ceiling", rate, ceiling, "(reference)", None)
            for kind, rate in (("step commands", steps_rate), ("warm process", warm_rate))
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.annotation", description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    code = report(run(count=args.count), args.json)
    if not args.json:
        print("warm run, seconds per step:", {k: round(v, 2) for k, v in SPLITS.items()})
        print("warm run, S3 calls:", dict(REQUESTS.most_common()))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
