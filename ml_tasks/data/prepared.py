"""Reading what prepare wrote: ``prepared/<dataset version>/`` in the lake.

``summary.json`` is written last, so :func:`prepared_prefix` refuses a version whose prepare
never ran or has not finished; :func:`load_prepared` gives train, validate and tune the arrays.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ml_tasks.core.lake import Lake, open_lake
from ml_tasks.core.settings import Settings
from ml_tasks.core.step import StepError


def prepared_prefix(lake: Lake, dataset_version: str) -> str:
    """``prepared/<dataset version>`` in the lake, once prepare has written all of it.

    Readers (checks, train, validate) call this first: ``summary.json`` is written last, so a
    version without it was never prepared, or its prepare has not finished (or failed).
    """
    prefix = f"prepared/{dataset_version}"
    if not lake.exists(f"{prefix}/summary.json"):
        raise StepError(
            f"dataset version {dataset_version} is not prepared (no {prefix}/summary.json in "
            f"{lake.url('')}): run `python -m ml_tasks.prepare --dataset-version "
            f"{dataset_version}` first"
        )
    return prefix


@dataclass
class PreparedData:
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    classes: list[str]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == name
        return self.x[mask], self.y[mask]


def load_prepared(settings: Settings, dataset_version: str) -> PreparedData:
    lake = open_lake(settings.lake_uri)
    raw = lake.read_bytes(f"{prepared_prefix(lake, dataset_version)}/data.npz")
    with np.load(io.BytesIO(raw)) as data:
        return PreparedData(data["x"], data["y"], data["split"], [str(c) for c in data["classes"]])
