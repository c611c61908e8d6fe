"""The Assets that chain Flywheel's DAGs: the annotation loop publishes, training listens.

One place for the name, because two DAG files (training, and issue 5's ingest DAG that adds
labelled images to the DVC dataset) must agree on it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import Asset

DATASET_URI = "flywheel://dataset/images"
DATASET_ASSET_NAME = "flywheel_dataset_images"


def dataset_asset() -> Asset:
    """The DVC image dataset: an event on it means a new dataset version was committed."""
    from airflow.sdk import Asset

    return Asset(name=DATASET_ASSET_NAME, uri=DATASET_URI, group="dataset")
