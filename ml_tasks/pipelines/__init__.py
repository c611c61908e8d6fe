"""The training chain as a Kubeflow Pipelines (kfp 2) pipeline, and the ways to run it.

- :mod:`ml_tasks.pipelines.components`: the components; each calls a step's typed function.
- :mod:`ml_tasks.pipelines.pipeline`: the pipelines (the chain; one step) and their compiler.
- :mod:`ml_tasks.pipelines.runtime`: what runs inside a component (no kfp import).
- :mod:`ml_tasks.pipelines.rest`: a small client of KFP's v2beta1 REST API (standard library
  only, so the Airflow side uses it too: kfp cannot be installed there).
- ``python -m ml_tasks.pipelines compile|local|submit|submit-step|result``.

Importing this package imports nothing from kfp.
"""
