"""``python -m ml_tasks.pipelines``: compile, run locally, submit to Kubeflow, read a result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_tasks.core.command import command_app, entry_point, finish
from ml_tasks.core.options import DatasetVersion

Epochs = Annotated[int | None, typer.Option(min=1, help="default: params.yaml", show_default=False)]
LearningRate = Annotated[
    float | None, typer.Option(help="default: params.yaml", show_default=False)
]
MinImprovement = Annotated[
    float | None, typer.Option(help="default: params.yaml", show_default=False)
]
ForceRegister = Annotated[
    bool, typer.Option("--force-register", help="register when the floors pass, even if not better")
]
Experiment = Annotated[
    str | None,
    typer.Option(help="default: FLYWHEEL_KFP_EXPERIMENT or flywheel", show_default=False),
]


def training_parameters(
    dataset_version: str | None,
    epochs: int | None,
    learning_rate: float | None,
    min_improvement: float | None,
    force_register: bool,
) -> dict[str, Any]:
    """The pipeline's parameters from the command line (unset ones keep their defaults)."""
    given = {
        "dataset_version": dataset_version,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "min_improvement": min_improvement,
    }
    out: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if force_register:
        out["force_register"] = True
    return out


app = command_app(
    help="The training pipeline on Kubeflow Pipelines: compile it, run it here, submit it or "
    "one step of it, read a step's stored result."
)


@app.command("compile")
def compile_command(
    out: Annotated[
        Path | None,
        typer.Option(
            help="default: <FLYWHEEL_HOME>/pipelines/<pipeline name>.yaml", show_default=False
        ),
    ] = None,
    step: Annotated[
        str | None,
        typer.Option(help="compile the one-step pipeline of this step instead", show_default=False),
    ] = None,
) -> None:
    """Compile the training pipeline to IR YAML."""
    from ml_tasks.core.settings import load_settings
    from ml_tasks.pipelines.pipeline import compile_pipeline, step_pipeline, training_pipeline

    func = step_pipeline(step) if step else training_pipeline()
    name = f"flywheel-step-{step}" if step else "flywheel-training"
    print(compile_pipeline(func, out or load_settings().home / "pipelines" / f"{name}.yaml"))


@app.command("local")
def local_command(
    dataset_version: DatasetVersion = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    min_improvement: MinImprovement = None,
    force_register: ForceRegister = False,
) -> None:
    """Run the training pipeline here with kfp.local."""
    from ml_tasks.pipelines.local import LocalRunFailed, run_training_locally

    parameters = training_parameters(
        dataset_version, epochs, learning_rate, min_improvement, force_register
    )
    try:
        result = run_training_locally(parameters)
    except LocalRunFailed as exc:
        print(f"error: the pipeline failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(json.dumps(result, default=str))


@app.command("submit")
def submit_command(
    experiment: Experiment = None,
    run_name: Annotated[str, typer.Option()] = "flywheel-training",
    dataset_version: DatasetVersion = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    min_improvement: MinImprovement = None,
    force_register: ForceRegister = False,
    wait: Annotated[bool, typer.Option("--wait", help="wait; exit 1 unless it succeeded")] = False,
    poll: Annotated[float, typer.Option(help="seconds between polls (--wait)")] = 5.0,
) -> None:
    """Submit the training pipeline to Kubeflow."""
    from ml_tasks.pipelines.submit import submit_training

    parameters = training_parameters(
        dataset_version, epochs, learning_rate, min_improvement, force_register
    )
    finish(
        submit_training(
            parameters, run_name=run_name, experiment=experiment, wait_poll=poll if wait else None
        )
    )


@app.command("submit-step", epilog="The step's own arguments follow a `--`.")
def submit_step_command(
    step: Annotated[str, typer.Argument(help="the step (prepare, train, ...)")],
    run_name: Annotated[str, typer.Option()],
    arguments: Annotated[
        list[str] | None, typer.Argument(help="the step's own arguments", show_default=False)
    ] = None,
    context_json: Annotated[str, typer.Option(help="the caller's ids (AIRFLOW_CTX_*)")] = "{}",
    experiment: Experiment = None,
) -> None:
    """Submit one step (the Airflow backend's call)."""
    from ml_tasks.pipelines.submit import submit_step

    finish(
        submit_step(
            step,
            arguments or [],
            run_name=run_name,
            context_json=context_json,
            experiment=experiment,
        )
    )


@app.command("result")
def result_command(
    run_id: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Option(help="the step (prepare, train, ...)")],
) -> None:
    """Print the stored result of a step of a run."""
    from ml_tasks.pipelines.submit import print_result

    finish(print_result(run_id, task))


main = entry_point(app, "ml_tasks.pipelines")

if __name__ == "__main__":
    raise SystemExit(main())
