"""The model service's parts: request parsing, the predictor, the incoming-image store, metrics.

:mod:`ml_tasks.serving.service` puts them together (``python -m ml_tasks.serve``, whose
docstring gives the request payloads); :mod:`ml_tasks.serving.feeding` plays production traffic
against it. Importing this package does nothing (KServe, torch and MLflow load inside functions).
"""
