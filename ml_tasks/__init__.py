"""Flywheel's ML code, importable without Airflow. The path says what a module is:

- ``ml_tasks/<command>.py``: a command, ``python -m ml_tasks.<command>``. The pipeline steps
  (resolve_dataset, prepare, checks, train, validate, deploy, tune) and the other commands
  (dataset, audit, chain, config, serve, feed). A command parses options, calls typed
  functions and reports through :mod:`ml_tasks.core.step`.
- ``ml_tasks/annotation/``: the annotation loop's commands (claim, preannotate, tasks, ingest).
- ``ml_tasks/pipelines/``: the chain as a Kubeflow pipeline, ``python -m ml_tasks.pipelines``.
- libraries: ``core/`` (settings, events, the lake, the step contract), ``data/`` (images,
  dataset versions, prepare's parts), ``model/`` (the network, MLflow tracking, tuning),
  ``serving/`` (the model server's parts, the KServe InferenceService).

Development tooling (the local stack, local servers, the demo driver) is in ``tools/``, outside
this package: the images do not ship it. Importing this package does nothing.
"""
