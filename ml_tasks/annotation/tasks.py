"""Tasks: put a pre-annotated batch in front of people, in Label Studio.

- **Project**: one per dataset, titled ``Flywheel: <dataset>``, found again by title; its
  labelling config is generated from the class list. Controls: ``label`` (the class, one
  choice; predictions use the same ``from_name``/``to_name``, or Label Studio silently hides
  them), ``quality`` (tick ``unusable`` to keep an image out of the dataset) and ``reason``.
- **Storages**: an S3 import storage over ``annotation/`` with presigning off, so Label Studio
  fetches and serves the images itself (the annotator's browser need not reach MinIO), and an
  S3 export storage that writes every saved annotation to ``labeled/<annotation id>``.
- **Tasks**: one per image, ``s3://`` URI plus the image's lake key, batch and content hash,
  with the champion's prediction (model version, score), created most uncertain first.

Creating is idempotent: the SDK's automatic retries are off for creates (it retries
non-idempotent calls); the batch's existing tasks are listed by lake key before the first
attempt and after any failure, and only the missing ones are created. On success the import's
answer (task ids, in request order) says what exists, sparing a listing of the whole batch.
Image keys are checked before creating (a missing S3 key would only fail later, in the
annotator's browser).

Connection: ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (from an Airflow Connection);
the storages get the S3 endpoint and keys from ``LABEL_STUDIO_S3_ENDPOINT`` (default
``AWS_ENDPOINT_URL``: the endpoint as Label Studio sees it), ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``.

``python -m ml_tasks.annotation.tasks --batch B [--dataset NAME]``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Annotated, Any
from xml.sax.saxutils import quoteattr

import typer

from ml_tasks.annotation.batches import ANNOTATION, LABELED, batch_key, read_json, write_json
from ml_tasks.annotation.options import Batch, RunId, report_batch
from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.lake import Lake, S3Lake, open_lake
from ml_tasks.core.options import ResultPath
from ml_tasks.core.settings import Settings, load_params
from ml_tasks.core.step import StepError

LABEL, IMAGE, QUALITY, REASON = "label", "image", "quality", "reason"
UNUSABLE = "unusable"
IMPORT_TITLE, EXPORT_TITLE = "flywheel-annotation", "flywheel-labeled"
NO_RETRY: dict[str, Any] = {"max_retries": 0}
CHUNK = 500
ATTEMPTS = 3


def project_title(dataset: str) -> str:
    return f"Flywheel: {dataset}"


def label_config(classes: list[str]) -> str:
    """The labelling config for ``classes``; names match :func:`prediction` exactly."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return f"""<View>
  <Image name="{IMAGE}" value="$image" zoom="true" zoomControl="true"/>
  <Header value="Class"/>
  <Choices name="{LABEL}" toName="{IMAGE}" choice="single" showInline="true">
{choices}
  </Choices>
  <Header value="Keep this image out of the dataset?"/>
  <Choices name="{QUALITY}" toName="{IMAGE}" choice="single" showInline="true">
    <Choice value="{UNUSABLE}"/>
  </Choices>
  <TextArea name="{REASON}" toName="{IMAGE}" placeholder="why (optional)" maxSubmissions="1"/>
</View>"""


def prediction(label: str, score: float, model_version: str) -> dict[str, Any]:
    return {
        "model_version": model_version,
        "score": score,
        "result": [
            {"from_name": LABEL, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}
        ],
    }


def connect() -> Any:
    from label_studio_sdk import LabelStudio

    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if not url or not key:
        raise StepError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (the Airflow Connection)")
    return LabelStudio(base_url=url.rstrip("/"), api_key=key, timeout=120)


def s3_settings(lake: S3Lake) -> dict[str, Any]:
    """What a Label Studio S3 storage needs to reach the lake's bucket."""
    endpoint = os.environ.get("LABEL_STUDIO_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    out: dict[str, Any] = {
        "bucket": lake.bucket,
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "region_name": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if endpoint:
        out["s3endpoint"] = endpoint
    return {k: v for k, v in out.items() if v}


def lake_prefix(lake: S3Lake, prefix: str) -> str:
    """A lake prefix as a bucket prefix, without a trailing slash (Label Studio adds one)."""
    return f"{lake.prefix}/{prefix}".strip("/") if lake.prefix else prefix.strip("/")


def ensure_project(ls: Any, lake: S3Lake, dataset: str, classes: list[str]) -> int:
    """Find the dataset's project by title, or create it with its storages; returns its id."""
    title = project_title(dataset)
    config = label_config(classes)
    found = [p for p in ls.projects.list(title=title) if p.title == title]
    if found:
        project = min(found, key=lambda p: p.id)
        if project.label_config != config:
            ls.projects.update(id=project.id, label_config=config)
    else:
        project = ls.projects.create(
            title=title,
            label_config=config,
            description="Images the model service saw, "
            "pre-annotated by the champion, most uncertain first.",
            request_options=NO_RETRY,
        )
    s3 = s3_settings(lake)
    # Import: presigning off, so Label Studio serves the images itself. Export: every saved
    # annotation to labeled/, removed there when deleted in Label Studio.
    no_presign = {"presign": False, "use_blob_urls": False}
    for storages, title, prefix, options in (
        (ls.import_storage.s3, IMPORT_TITLE, ANNOTATION, no_presign),
        (ls.export_storage.s3, EXPORT_TITLE, LABELED, {"can_delete_objects": True}),
    ):
        if not any(s.title == title for s in storages.list(project=project.id)):
            storages.create(
                project=project.id,
                title=title,
                prefix=lake_prefix(lake, prefix),
                request_options=NO_RETRY,
                **options,
                **s3,
            )
    return int(project.id)


def existing_tasks(ls: Any, project: int, batch: str) -> dict[str, int]:
    """Lake key -> task id of the tasks this batch already has in Label Studio."""
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:data.batch",
                        "operator": "equal",
                        "type": "String",
                        "value": batch,
                    }
                ],
            }
        }
    )
    found: dict[str, int] = {}
    for task in ls.tasks.list(project=project, query=query, fields="task_only", page_size=1000):
        key = (task.data or {}).get("key")
        if key:
            found.setdefault(key, int(task.id))
    return found


@dataclass(frozen=True)
class TasksCreated:
    batch: str
    project: int  # the Label Studio project's id
    tasks: int
    created: int
    reused: int  # tasks an earlier attempt had already created


def create_tasks(settings: Settings, batch: str, dataset: str) -> TasksCreated:
    lake = open_lake(settings.lake_uri)
    if not isinstance(lake, S3Lake):
        raise StepError("Label Studio reads images from S3: set FLYWHEEL_LAKE_URI=s3://bucket")
    predictions = read_json(lake, batch_key(batch, "predictions.json"))
    items: list[dict[str, Any]] = predictions["items"]
    classes = [str(c) for c in load_params(settings.params_path)["prepare"]["classes"]]
    stored = set(lake.list(batch_key(batch)))
    missing = [it["key"] for it in items if it["key"] not in stored]
    if missing:
        raise StepError(f"{len(missing)} claimed images are missing from the lake: {missing[:3]}")
    ls = connect()
    project = ensure_project(ls, lake, dataset, classes)
    have = existing_tasks(ls, project, batch)
    reused = len(have)
    for attempt in range(1, ATTEMPTS + 1):
        todo = [it for it in items if it["key"] not in have]
        if not todo:
            break
        try:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                done = ls.projects.import_tasks(
                    id=project,
                    request=[task_payload(it, lake, batch, predictions) for it in chunk],
                    return_task_ids=True,
                    request_options=NO_RETRY,
                )
                ids = list(getattr(done, "task_ids", None) or [])
                if len(ids) != len(chunk):  # not the answer we know: ask for the real state
                    raise StepError(f"import answered {len(ids)} task ids for {len(chunk)} tasks")
                # Label Studio bulk-creates in request order and answers the ids in that order.
                have.update((it["key"], int(i)) for it, i in zip(chunk, ids, strict=True))
        except Exception as exc:  # an import may have saved before failing: look, then retry
            if attempt == ATTEMPTS:
                raise
            events.emit(
                "tasks_retry", level="warning", batch=batch, attempt=attempt, error=str(exc)[:300]
            )
            time.sleep(2 * attempt)
            have = existing_tasks(ls, project, batch)
    if set(have) != {it["key"] for it in items}:
        raise StepError(f"Label Studio has {len(have)} tasks for {len(items)} images of {batch}")
    write_json(lake, batch_key(batch, "tasks.json"), {"project": project, "tasks": have})
    created = len(have) - reused
    events.emit(
        "tasks_created",
        batch=batch,
        project=project,
        tasks=len(have),
        created=created,
        reused=reused,
        model_version=predictions["model_version"],
    )
    return TasksCreated(batch, project, len(have), created, reused)


def task_payload(item: dict[str, Any], lake: Lake, batch: str, predictions: dict[str, Any]) -> Any:
    return {
        "data": {
            IMAGE: lake.url(item["key"]),
            "key": item["key"],
            "batch": batch,
            "content_hash": item["content_hash"],
            "model_label": item["label"],
            "model_score": item["score"],
            "sidecar": item.get("sidecar"),
        },
        "predictions": [prediction(item["label"], item["score"], predictions["model_version"])],
    }


app = command_app()


@app.command()
def command(
    run_id: RunId = None,
    batch: Batch = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="dataset (project) name; default FLYWHEEL_DATASET, else FLYWHEEL_MODEL_NAME",
            show_default=False,
        ),
    ] = None,
    result_path: ResultPath = None,
) -> None:
    """Create Label Studio tasks with predictions for a pre-annotated batch."""
    report_batch(
        "tasks",
        (run_id, batch, result_path),
        lambda settings, name: create_tasks(
            settings, name, dataset or os.environ.get("FLYWHEEL_DATASET") or settings.model_name
        ),
    )


main = entry_point(app, "ml_tasks.annotation.tasks")

if __name__ == "__main__":
    raise SystemExit(main())
