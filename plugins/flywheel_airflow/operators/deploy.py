"""DeployOperator: make an approved model version the champion, and serve it.

Locally and on Kubeflow it runs ``python -m ml_tasks.deploy promote`` like any other step.
On ``kubernetes`` the new version must be served before ``champion`` names it: the operator
applies the InferenceService, defers until KServe reports it Ready (no worker slot held during
the rollout), and only then runs the promote step; a rollout that fails puts the previous
service back (:mod:`flywheel_airflow.backends.cluster_deploy`).

The model version is a typed value: whatever the DAG passes (a template over the validation
step's result) must render to a registered version's number, or the task fails at once, since
a retry cannot register one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from flywheel_airflow.operators.step import StepOperator, selected_backend


def model_version_number(value: object) -> int:
    """A registered model version (MLflow numbers them from 1), from a rendered template."""
    from airflow.sdk.exceptions import AirflowFailException

    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise AirflowFailException(
            f"model version {text!r} is not a registered version's number: nothing to deploy"
        )
    return int(text)


def approver(value: object) -> str:
    """Who approved the deploy, from a rendered template: a promote without one is refused."""
    from airflow.sdk.exceptions import AirflowFailException

    text = str(value or "").strip()
    if not text or text == "None":
        raise AirflowFailException("no approver recorded for this deploy: nothing to deploy")
    return text


class DeployOperator(StepOperator):
    """Promote ``model_version`` to champion, approved by ``approved_by`` (both templated)."""

    template_fields: Sequence[str] = ("model_version", "approved_by", "caller_run_id")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        model_version: int | str,
        approved_by: str,
        caller_run_id: str = "{{ run_id }}",
        canary_percent: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(step="deploy", **kwargs)
        self.model_version = model_version
        self.approved_by = approved_by
        self.caller_run_id = caller_run_id
        self.canary_percent = canary_percent

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.model_version = model_version_number(self.model_version)
        self.approved_by = approver(self.approved_by)
        self.arguments = self.promote_arguments()

    def promote_arguments(self) -> list[str]:
        """``deploy promote``'s command line, from the typed fields."""
        canary = (
            [] if self.canary_percent is None else ["--canary-percent", str(self.canary_percent)]
        )
        return [
            "promote",
            "--model-version",
            str(self.model_version),
            "--approved-by",
            str(self.approved_by),
            "--caller-run-id",
            str(self.caller_run_id),
            *canary,
        ]

    def execute(self, context: Any) -> Any:
        if selected_backend() != "kubernetes":
            return super().execute(context)
        from flywheel_airflow.backends.cluster_deploy import start_cluster_deploy

        # Rendering checked the version and made it an int (render_template_fields).
        version = cast(int, self.model_version)
        start_cluster_deploy(self, model_version=version, canary_percent=self.canary_percent)

    def execute_deployed(
        self,
        context: Any,
        event: dict[str, Any],
        manifest: dict[str, Any],
        previous: dict[str, Any] | None = None,
    ) -> Any:
        """Resume on kubernetes once the InferenceService trigger fired."""
        from flywheel_airflow.backends.cluster_deploy import finish_cluster_deploy

        return finish_cluster_deploy(self, context, event, manifest, previous)
