"""Pre-annotate: the champion's label and score for each claimed image, most uncertain first.

Reviewers' time goes where the model is unsure: images are ranked by the champion's top
probability, lowest first. Each image is checked against its content name (``<sha256[:16]>.png``,
so the claim's copy is the bytes the service stored) and decoded with the serving rules; an image
that fails either goes to ``quarantine/annotation/`` with the reason instead of to a human.
The result, ``annotation/<batch>/predictions.json``, is rewritten whole on a retry.

``python -m ml_tasks.annotation.preannotate --batch B [--model-uri models:/digits@champion]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ml_tasks.annotation.batches import QUARANTINE, batch_key, load_manifest, write_json
from ml_tasks.annotation.options import Batch, RunId, report_batch
from ml_tasks.annotation.storage import parallel
from ml_tasks.core import events
from ml_tasks.core.command import command_app, entry_point
from ml_tasks.core.lake import Lake, open_lake
from ml_tasks.core.options import ResultPath
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError


@dataclass(frozen=True)
class Preannotated:
    batch: str
    images: int
    quarantined: int
    model_version: str
    lowest_score: float | None  # the most uncertain image's top probability
    predictions: str  # the predictions document's URL


def quarantine(lake: Lake, key: str, name: str, reason: str, **details: Any) -> str:
    """Keep a bad image out of the loop, with why: ``quarantine/annotation/<name>`` + JSON."""
    target = QUARANTINE + name
    lake.copy(key, target)
    stem = name.rsplit(".", 1)[0]
    write_json(
        lake, f"{QUARANTINE}{stem}.reason.json", {"reason": reason, "source": key, **details}
    )
    return target


def preannotate(settings: Settings, batch: str, model_uri: str) -> Preannotated:
    import numpy as np

    from ml_tasks.data.images import BadImage, content_hash, decode_image
    from ml_tasks.model.classifier import load_classifier
    from ml_tasks.model.tracking import use_mlflow

    lake = open_lake(settings.lake_uri)
    manifest = load_manifest(lake, batch)
    use_mlflow(settings)
    try:
        classifier = load_classifier(model_uri)
    except Exception as exc:  # MLflow raises many kinds; all mean "no usable model here"
        raise StepError(f"cannot load {model_uri}: {exc}") from exc

    # The claim verified each copy; the content name (<sha256[:16]>.png) re-checks the bytes
    # without a second read per image (the sidecar), which halves the object-store calls.
    loaded = parallel(lambda item: lake.read_bytes(item["image"]), manifest["images"])
    pixels, kept, quarantined = [], [], []
    for item, data in zip(manifest["images"], loaded, strict=True):
        digest = content_hash(data)
        try:
            if not item["name"].startswith(digest[:16]):
                raise BadImage("hash_mismatch", "the stored image does not match its content name")
            pixels.append(decode_image(data, size=classifier.image_size))
        except BadImage as exc:
            quarantine(lake, item["image"], item["name"], exc.reason, detail=str(exc), batch=batch)
            quarantined.append(item["name"])
            continue
        kept.append((item, digest))
    if pixels:
        probabilities = classifier.predict_proba(np.stack(pixels).astype(np.float32) / 255.0)
    else:
        probabilities = np.zeros((0, len(classifier.classes)), dtype=np.float32)
    items = []
    for (item, digest), probs in zip(kept, probabilities, strict=True):
        best = int(probs.argmax())
        items.append(
            {
                "key": item["image"],
                "name": item["name"],
                "content_hash": digest,
                "label": classifier.classes[best],
                "score": round(float(probs[best]), 6),
                "sidecar": item["sidecar"],
            }
        )
    items.sort(key=lambda it: (it["score"], it["name"]))
    model_version = (
        f"{settings.model_name}@v{classifier.version}" if classifier.version else model_uri
    )
    write_json(
        lake,
        batch_key(batch, "predictions.json"),
        {
            "batch": batch,
            "model_uri": model_uri,
            "model_version": model_version,
            "classes": classifier.classes,
            "items": items,
            "quarantined": quarantined,
        },
    )
    events.emit(
        "images_preannotated",
        batch=batch,
        images=len(items),
        quarantined=len(quarantined),
        model_version=classifier.version,
    )
    return Preannotated(
        batch=batch,
        images=len(items),
        quarantined=len(quarantined),
        model_version=model_version,
        lowest_score=items[0]["score"] if items else None,
        predictions=lake.url(batch_key(batch, "predictions.json")),
    )


app = command_app()


@app.command()
def command(
    run_id: RunId = None,
    batch: Batch = None,
    model_uri: Annotated[
        str | None,
        typer.Option(help="default: models:/<FLYWHEEL_MODEL_NAME>@champion", show_default=False),
    ] = None,
    result_path: ResultPath = None,
) -> None:
    """Predict each claimed image with the champion; rank most uncertain first."""
    report_batch(
        "preannotate",
        (run_id, batch, result_path),
        lambda settings, name: preannotate(
            settings, name, model_uri or f"models:/{settings.model_name}@champion"
        ),
    )


main = entry_point(app, "ml_tasks.annotation.preannotate")

if __name__ == "__main__":
    raise SystemExit(main())
