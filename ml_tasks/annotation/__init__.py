"""The annotation loop: new images from the model service become labelled dataset versions.

One module per thing a user does, each a step (``python -m ml_tasks.annotation.<step>``):

- :mod:`~ml_tasks.annotation.claim`: move a batch of waiting images out of ``incoming/``.
- :mod:`~ml_tasks.annotation.preannotate`: the champion's label and score for each one.
- :mod:`~ml_tasks.annotation.tasks`: Label Studio project, storages and tasks with predictions.
- :mod:`~ml_tasks.annotation.ingest`: validated annotations into a new DVC dataset version.

Their parts: the claim ledger and the storage calls claiming needs (``ledger``, ``storage``),
what annotations decide (``decisions``), committing and pushing a version (``publish``), the
batch steps' options (``options``) and where a batch lives (``batches``).

A local Label Studio for tests and the local stack is development tooling:
:mod:`tools.label_studio_server`. Nothing here imports Airflow; only ``claim`` and the helpers
are light enough for the orchestrator environment.
"""
