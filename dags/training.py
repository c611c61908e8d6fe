"""
### Training: data → checks → model → gate → approval → champion

Trains the digits classifier on a dataset version and, when it beats the champion and a person
approves, deploys it:

`resolve_dataset` → `prepare` → `checks` (Great Expectations; a failure stops the run) →
`train` (MLflow) → `validate` (test split against the champion) → `register_if_better` →
`await_approval` (human in the loop) → `deploy` or `record_rejection`.

- **When**: nightly at 02:00 UTC (unpausing does not run a slot that passed), whenever a new
  dataset version is published (Asset `flywheel://dataset/images`, emitted by the annotation
  loop), by hand (validated params), and as backfills:
  `airflow backfill create --dag-id training --from-date … --to-date …`.
- **Backfills** train on the dataset version that was current at their logical date and
  evaluate only: nothing is registered, no alias moves, no approval is asked. Create them with
  `--max-active-runs 1` (a backfill's own limit; the DAG's applies to other runs) on an
  unpaused DAG.
- **Where steps run** is the `FLYWHEEL_BACKEND` setting (environment or Variable
  `flywheel_backend`): `local` (subprocess) or `kubernetes` (pods); this file never changes.
- **Approval**: only the users in `FLYWHEEL_APPROVERS` / Variable `flywheel_approvers` may
  answer (UI: *Required Actions*); no answer within 24 h
  (`FLYWHEEL_APPROVAL_TIMEOUT`, seconds) means **Reject**.
- **Audit**: `python -m ml_tasks.audit --run-id <run id>` lists every decision of a run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import AssetOrTimeSchedule, Param, dag, task
from flywheel_airflow.arguments import MACROS
from flywheel_airflow.assets import dataset_asset
from flywheel_airflow.dag_defaults import (
    dataset_version_param,
    flywheel_dag_args,
    optional_param,
)
from flywheel_airflow.gates import (
    AWAIT_APPROVAL,
    BACKFILL_KEEPS_CHAMPION,
    REGISTRATION_SKIPPED,
    approval_responder,
    approval_timeout,
    is_backfill,
    rejection_reason,
)
from flywheel_airflow.operators.approval import ApprovalGate
from flywheel_airflow.operators.deploy import DeployOperator
from flywheel_airflow.operators.step import StepOperator
from flywheel_airflow.timetables.nightly import NightlySchedule

DATASET = "{{ ti.xcom_pull(task_ids='resolve_dataset')['dataset_version'] }}"
MODEL_VERSION = "{{ ti.xcom_pull(task_ids='validate')['model_version'] }}"
# Who answered; with no answer behind them (the approval marked success by hand) the two
# tasks after the approval skip, so nothing deploys without a person's decision.
APPROVED_BY = "{{ approval_responder(ti, approved=True) }}"
REJECTED_BY = "{{ approval_responder(ti, approved=False) }}"


@dag(
    dag_id="training",
    schedule=AssetOrTimeSchedule(
        # Unpausing never starts the slot that passed already (no hidden run before yours).
        # A custom timetable is a core Timetable (registered by a plugin), not an SDK one.
        timetable=NightlySchedule("0 2 * * *", timezone="UTC"),  # type: ignore[arg-type]
        assets=dataset_asset(),
    ),
    max_active_runs=1,
    dagrun_timeout=timedelta(days=2),
    user_defined_macros={
        **MACROS,
        "is_backfill": is_backfill,
        "approval_responder": approval_responder,
        "rejection_reason": rejection_reason,
    },
    **flywheel_dag_args(__doc__, "training", "mlops"),
    params={
        "epochs": optional_param(
            "integer", "training epochs (empty: params.yaml)", minimum=1, maximum=500
        ),
        "learning_rate": optional_param(
            "number", "learning rate (empty: params.yaml)", exclusiveMinimum=0, maximum=1
        ),
        "min_improvement": optional_param(
            "number",
            "accuracy gain over the champion needed to register (empty: params.yaml)",
            minimum=0,
            maximum=1,
        ),
        "force_register": Param(
            False, type="boolean", description="register when the floors pass, even if not better"
        ),
        "dataset_version": dataset_version_param(
            "train on this dataset version (empty: current, or the one current at the logical "
            "date for backfills)"
        ),
        "use_best_params": Param(
            False,
            type="boolean",
            description="start from the latest tuned params for the dataset version (the "
            "tuning DAG); epochs and learning rate given here still win",
        ),
    },
)
def training() -> None:
    resolve_dataset = StepOperator(
        task_id="resolve_dataset",
        step="resolve_dataset",
        arguments=[
            "{{ option('--as-of', backfill_date(dag_run)) }}",
            "{{ option('--dataset-version', params.dataset_version) }}",
        ],
    )
    prepare = StepOperator(
        task_id="prepare", step="prepare", arguments=["--dataset-version", DATASET, "--no-progress"]
    )
    checks = StepOperator(task_id="checks", step="checks", arguments=["--dataset-version", DATASET])
    train = StepOperator(
        task_id="train",
        step="train",
        arguments=[
            "--dataset-version",
            DATASET,
            "--caller-run-id",
            "{{ run_id }}",
            "--no-progress",
            # Runs triggered by hand (UI, CLI, REST) have no logical date in Airflow 3.
            "{{ option('--logical-date', dag_run.logical_date) }}",
            "{{ option('--epochs', params.epochs) }}",
            "{{ option('--learning-rate', params.learning_rate) }}",
            "{{ switch('--use-best-params', params.use_best_params) }}",
        ],
        execution_timeout=timedelta(hours=6),
    )
    validate = StepOperator(
        task_id="validate",
        step="validate",
        arguments=[
            "--run-id",
            "{{ ti.xcom_pull(task_ids='train')['mlflow_run_id'] }}",
            "--dataset-version",
            DATASET,
            "--caller-run-id",
            "{{ run_id }}",
            "{{ switch('--force-register', params.force_register) }}",
            "{{ switch('--evaluate-only', is_backfill(dag_run)) }}",
            "{{ option('--min-improvement', params.min_improvement) }}",
        ],
    )

    @task.branch
    def register_if_better(decision: dict[str, Any], **context: Any) -> str:
        """Continue to approval only with a newly registered challenger, outside backfills."""
        from flywheel_airflow.gates import record_gate, route_after_validation

        route, reason = route_after_validation(decision, backfill=is_backfill(context["dag_run"]))
        record_gate(
            context,
            "register_if_better",
            route,
            reason,
            model_version=decision.get("model_version"),
            dataset_version=decision.get("dataset_version"),
            mlflow_run_id=decision.get("mlflow_run_id"),
        )
        return route

    await_approval = ApprovalGate(
        task_id=AWAIT_APPROVAL,
        decision_task_id="validate",
        approve_task_id="deploy",
        reject_task_id="record_rejection",
        response_timeout=approval_timeout(),
    )
    deploy = DeployOperator(task_id="deploy", model_version=MODEL_VERSION, approved_by=APPROVED_BY)
    record_rejection = StepOperator(
        task_id="record_rejection",
        step="deploy",
        arguments=[
            "reject",
            "--model-version",
            MODEL_VERSION,
            "--rejected-by",
            REJECTED_BY,
            "--reason",
            "{{ rejection_reason(ti) }}",
            "--caller-run-id",
            "{{ run_id }}",
        ],
    )
    skipped = EmptyOperator(task_id=REGISTRATION_SKIPPED)
    backfill = EmptyOperator(task_id=BACKFILL_KEEPS_CHAMPION)

    gate = register_if_better(validate.output)  # type: ignore[arg-type]
    resolve_dataset >> prepare >> checks >> train >> validate
    gate >> [await_approval, skipped, backfill]
    await_approval >> [deploy, record_rejection]


training()
