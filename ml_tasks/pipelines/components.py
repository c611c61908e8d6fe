"""The pipeline's components: plain functions that kfp turns into lightweight components.

kfp ships each function's source into the container (or, with ``kfp.local``, a subprocess), so
every body imports what it uses and calls the step's typed function through
:func:`ml_tasks.pipelines.runtime.run_component`: the same function the step's CLI calls, under
the same contract. Optional numbers use a sentinel (0, or -1 for ``min_improvement``) meaning
"the value in params.yaml". Decorated in :mod:`ml_tasks.pipelines.pipeline`, where the image
is known.
"""


def prepare_op(dataset_version: str, kfp_run_id: str, context_json: str) -> dict:
    """Prepare a dataset version (empty: the one ``data/images.dvc`` records)."""
    from ml_tasks.core.settings import load_settings
    from ml_tasks.core.workspace import writable_repo
    from ml_tasks.pipelines.runtime import apply_context, run_component
    from ml_tasks.prepare import prepare

    apply_context(context_json)
    return run_component(
        "prepare",
        lambda: prepare(
            writable_repo(load_settings()), dataset_version=dataset_version or None, progress=False
        ),
        kfp_run_id=kfp_run_id,
    )


def checks_op(prepared: dict, kfp_run_id: str, context_json: str) -> dict:
    """The Great Expectations checks on the prepared version."""
    from ml_tasks.checks import check
    from ml_tasks.core.settings import load_settings
    from ml_tasks.pipelines.runtime import apply_context, run_component

    apply_context(context_json)
    version = str(prepared["dataset_version"])
    return run_component("checks", lambda: check(load_settings(), version), kfp_run_id=kfp_run_id)


def train_op(
    prepared: dict,
    checked: dict,
    epochs: int,
    learning_rate: float,
    caller_run_id: str,
    kfp_run_id: str,
    context_json: str,
) -> dict:
    """Train on the checked version; the MLflow run carries the caller's and the KFP run id."""
    from ml_tasks.model.tracking import tracked
    from ml_tasks.pipelines.runtime import apply_context, run_component
    from ml_tasks.train import train

    apply_context(context_json)
    overrides = {"epochs": epochs or None, "learning_rate": learning_rate or None}
    assert checked["checks"] == "passed"
    return run_component(
        "train",
        tracked(
            lambda settings: train(
                settings,
                str(prepared["dataset_version"]),
                overrides,
                caller_run_id=caller_run_id or kfp_run_id,
                progress=False,
            )
        ),
        kfp_run_id=kfp_run_id,
    )


def validate_op(
    trained: dict,
    min_improvement: float,
    force_register: bool,
    caller_run_id: str,
    kfp_run_id: str,
    context_json: str,
) -> dict:
    """Test against the incumbent; register a challenger only if better."""
    from ml_tasks.model.tracking import tracked
    from ml_tasks.pipelines.runtime import apply_context, run_component
    from ml_tasks.validate import validate

    apply_context(context_json)
    return run_component(
        "validate",
        tracked(
            lambda settings: validate(
                settings,
                str(trained["mlflow_run_id"]),
                str(trained["dataset_version"]),
                force=force_register,
                caller_run_id=caller_run_id or kfp_run_id,
                min_improvement=None if min_improvement < 0 else min_improvement,
            )
        ),
        kfp_run_id=kfp_run_id,
    )


def step_op(step: str, arguments: list, kfp_run_id: str, context_json: str) -> dict:
    """Any step, as its CLI runs it (``python -m ml_tasks.<step> ARGS``): one Airflow task."""
    import importlib

    from ml_tasks.pipelines.runtime import apply_context, run_cli

    apply_context(context_json)
    main = importlib.import_module(f"ml_tasks.{step}").main
    return run_cli(step, main, [str(a) for a in arguments], kfp_run_id=kfp_run_id, task=step)
