"""The model service's parts: request parsing, the predictor, the incoming-image store, metrics.

``python -m ml_tasks.serve`` puts them together; see its docstring for the request payloads.
Importing this package does nothing (KServe, torch and MLflow load inside functions).
"""
