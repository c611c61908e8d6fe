"""
### Tuning: an Optuna study of the training hyperparameters, N workers in parallel

`resolve_dataset` → `prepare` → `create_study` (the study and its MLflow parent run, created
once before any worker: workers that create the schema together crash) → `tune` × N (dynamic
task mapping; each worker runs trials until the study holds `trials`, so together they run
exactly that many) → `finish` (best params and value, counts, plots on the parent run; best
params to the lake) → `summary` (the run note: the best trial, with MLflow links).

- **When**: weekly (Sunday 03:00 UTC) and by hand with params: trials, workers, timeout,
  dataset version. The search space is `params.yaml` (`tune:`).
- **Storage**: `FLYWHEEL_OPTUNA_STORAGE`, or the Airflow Connection `flywheel_optuna` handed to
  the steps as `AIRFLOW_CONN_FLYWHEEL_OPTUNA`, else SQLite under the state folder (one machine
  only). Workers in parallel or on a cluster need PostgreSQL.
- **Where workers run** is `FLYWHEEL_BACKEND`, as for training: subprocesses, pods, ...
- **A worker that dies** loses only its running trial: its heartbeat stops, and the next worker
  (or `finish`) marks it and its MLflow run failed; a retry of the task picks up the study.
- **Training** uses the result when its `use_best_params` param is on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from flywheel_airflow.arguments import MACROS
from flywheel_airflow.dag_defaults import (
    dataset_version_param,
    flywheel_dag_args,
    optional_param,
)
from flywheel_airflow.operators.step import StepOperator

DATASET = "{{ ti.xcom_pull(task_ids='resolve_dataset')['dataset_version'] }}"


@dag(
    dag_id="tuning",
    schedule="0 3 * * 0",
    max_active_runs=1,
    dagrun_timeout=timedelta(days=1),
    **flywheel_dag_args(__doc__, "tuning", "mlops"),
    user_defined_macros=MACROS,
    params={
        "trials": Param(20, type="integer", minimum=1, maximum=1000, description="trials in all"),
        "workers": Param(2, type="integer", minimum=1, maximum=64, description="parallel workers"),
        "timeout": optional_param(
            "integer", "seconds after which workers start no new trial (empty: none)", minimum=1
        ),
        "dataset_version": dataset_version_param(
            "tune on this dataset version (empty: the current one)"
        ),
    },
)
def tuning() -> None:
    resolve_dataset = StepOperator(
        task_id="resolve_dataset",
        step="resolve_dataset",
        arguments=["{{ option('--dataset-version', params.dataset_version) }}"],
    )
    prepare = StepOperator(
        task_id="prepare", step="prepare", arguments=["--dataset-version", DATASET, "--no-progress"]
    )
    create_study = StepOperator(
        task_id="create_study",
        step="tune",
        arguments=[
            "create",
            "--dataset-version",
            DATASET,
            "--study",
            "{{ study_name(run_id) }}",
            "--caller-run-id",
            "{{ run_id }}",
        ],
    )

    @task
    def plan_workers(created: dict[str, Any], **context: Any) -> list[list[str]]:
        """One argument list per worker: the same study and total, its own sampler seed."""
        params = context["params"]
        timeout = ["--timeout", str(params["timeout"])] if params.get("timeout") else []
        return [
            [
                *("worker", "--study", created["study"], "--n-trials", str(params["trials"])),
                *("--worker-index", str(index), "--no-progress", *timeout),
            ]
            for index in range(int(params["workers"]))
        ]

    workers = StepOperator.partial(
        task_id="tune", step="tune", execution_timeout=timedelta(hours=12)
    ).expand(arguments=plan_workers(create_study.output))  # type: ignore[arg-type]
    finish = StepOperator(
        task_id="finish",
        step="tune",
        arguments=["finish", "--study", "{{ ti.xcom_pull(task_ids='create_study')['study'] }}"],
        trigger_rule="all_done",  # a dead worker loses its trial, not the study's summary
    )

    @task
    def summary(result: dict[str, Any], **context: Any) -> str:
        """The run note: best trial, value, params and where to look."""
        from flywheel_airflow.gates import set_run_note
        from flywheel_airflow.operators.approval import mlflow_ui_url

        ui = mlflow_ui_url()

        def link(run_id: str | None) -> str:
            if not run_id:
                return "—"
            return f"[{run_id[:8]}]({ui}/#/runs/{run_id})" if ui else f"`{run_id}`"

        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result["params"].items()
        )
        note = (
            f"study {result['study']} (dataset {str(result['dataset_version'])[:12]}): best "
            f"trial {result['trial']}, {result['metric']}={result['value']:.4f}; {params}. "
            f"Trials: {result['counts']}. MLflow: study {link(result['mlflow_parent_run_id'])}, "
            f"best trial {link(result.get('mlflow_run_id'))}."
        )
        dag_run = context["dag_run"]
        set_run_note(dag_run.dag_id, dag_run.run_id, note)
        return note

    resolve_dataset >> prepare >> create_study
    workers >> finish
    summary(finish.output)  # type: ignore[arg-type]


tuning()
