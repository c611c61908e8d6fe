"""
### Intake: new images -> claimed batch -> champion's guesses -> Label Studio tasks

The model service stores the inputs it samples in the lake's `incoming/` (an image plus a
sidecar JSON each). When at least **`min_images`** wait, the run:

1. **claims** up to **`batch_size`** of them into `annotation/<batch>/` (copy, verify, delete;
   the batch is named after this run, so a retry resumes it and overlapping runs never claim
   the same image);
2. **pre-annotates** them with the `champion` model (label + score, most uncertain first);
3. **creates Label Studio tasks** with those predictions (idempotent: a retry adds only
   the missing tasks).

People then check the labels in Label Studio; the `flywheel_ingest` DAG turns their
validated annotations into a new dataset version. Connections: `flywheel_s3` (aws, the
lake's endpoint and keys) and `flywheel_label_studio` (http, host = URL, password = API token).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag
from flywheel_airflow.dag_defaults import flywheel_dag_args
from flywheel_airflow.operators.connected_step import ConnectedStepOperator
from flywheel_airflow.sensors.incoming import IncomingImagesSensor

S3_CONN = "flywheel_s3"
LABEL_STUDIO_CONN = "flywheel_label_studio"
BATCH = ["--run-id", "{{ run_id }}"]


@dag(
    dag_id="flywheel_intake",
    schedule=timedelta(minutes=30),
    max_active_runs=2,  # overlapping runs are safe: each image is claimed once
    params={
        "min_images": Param(
            100, type="integer", minimum=1, description="start when at least this many images wait"
        ),
        "batch_size": Param(
            1000, type="integer", minimum=1, description="claim at most this many images per run"
        ),
        "poke_seconds": Param(
            60, type="number", minimum=0.1, description="seconds between checks while waiting"
        ),
    },
    **flywheel_dag_args(__doc__, "annotation"),
)
def flywheel_intake() -> None:
    wait_for_images = IncomingImagesSensor(
        task_id="wait_for_images",
        min_images="{{ params.min_images }}",
        poke_seconds="{{ params.poke_seconds }}",
        aws_conn_id=S3_CONN,
        timeout=timedelta(minutes=29).total_seconds(),
        soft_fail=True,  # no images this half hour: the run is skipped, not failed
    )
    claim_images = ConnectedStepOperator(
        task_id="claim_images",
        step="annotation.claim",
        arguments=[*BATCH, "--max-images", "{{ params.batch_size }}"],
        connections={"s3": S3_CONN},
    )
    preannotate = ConnectedStepOperator(
        task_id="preannotate",
        step="annotation.preannotate",
        arguments=BATCH,
        connections={"s3": S3_CONN},
    )
    create_tasks = ConnectedStepOperator(
        task_id="create_label_studio_tasks",
        step="annotation.tasks",
        arguments=BATCH,
        connections={"s3": S3_CONN, "label_studio": LABEL_STUDIO_CONN},
    )
    wait_for_images >> claim_images >> preannotate >> create_tasks


flywheel_intake()
