"""ApprovalGate: a person approves (or not) deploying a registered challenger as champion.

Airflow's human-in-the-loop branch operator with what the gate needs:

- the approver sees the challenger's and the incumbent's test metrics side by side, the reason
  ``validate`` gave, and links to both MLflow runs and the model version;
- only configured approvers may answer (``FLYWHEEL_APPROVERS`` or the Variable
  ``flywheel_approvers``: ``id[:display name]`` comma-separated, read when the task runs, never
  at parse time); with none configured the gate fails closed;
- no answer within ``response_timeout`` means Reject (Airflow applies ``defaults``);
- the decision, who made it and when is an audit event and the XCom ``decision``, which the
  deploy and record-rejection steps stamp on the model version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator

APPROVE, REJECT = "Approve", "Reject"
TIMEOUT_RESPONDER = "timeout"


def parse_approvers(raw: str) -> list[dict[str, str]]:
    """``"alice:Alice Doe, bob"`` → ``[{"id": "alice", "name": "Alice Doe"}, {"id": "bob"...}]``."""
    users = []
    for item in raw.replace(";", ",").split(","):
        if item.strip():
            user_id, _, name = item.strip().partition(":")
            users.append({"id": user_id.strip(), "name": name.strip() or user_id.strip()})
    return users


def configured_approvers() -> list[dict[str, str]]:
    if raw := os.environ.get("FLYWHEEL_APPROVERS"):
        return parse_approvers(raw)
    from airflow.sdk import Variable

    return parse_approvers(str(Variable.get("flywheel_approvers", default="")))


def mlflow_ui_url() -> str | None:
    """Where people open MLflow: ``FLYWHEEL_MLFLOW_UI_URL``, else an http tracking URI."""
    url = os.environ.get("FLYWHEEL_MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    return url.rstrip("/") if url.startswith(("http://", "https://")) else None


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def worse_metrics(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """The test metrics on which the challenger scores below the incumbent."""
    return [
        metric
        for metric in ("accuracy", "macro_f1")
        if isinstance(new.get(metric), int | float)
        and isinstance(old.get(metric), int | float)
        and new[metric] < old[metric]
    ]


def approval_body(
    decision: dict[str, Any], ui: str | None, approvers: Sequence[dict[str, str]] = ()
) -> str:
    """The Markdown the approver reads: both models' metrics, the reason, the links, a warning
    when the challenger is worse than the incumbent (registration forced), who may answer."""
    name, version = decision.get("model_name"), decision.get("model_version")
    new, old = decision.get("new") or {}, decision.get("incumbent") or {}
    old_label = f"{old.get('alias')} v{old.get('version')}" if old else "no champion yet"
    worse = worse_metrics(new, old)

    def run_link(run_id: str | None) -> str:
        if not run_id:
            return "—"
        return f"[{run_id[:8]}]({ui}/#/runs/{run_id})" if ui else f"`{run_id}`"

    lines = [
        f"**{name} v{version}** was registered as `challenger`: {decision.get('reason')}.",
        "",
        f"| test split (dataset `{str(decision.get('dataset_version'))[:12]}`) "
        f"| challenger v{version} | {old_label} |",
        "| --- | --- | --- |",
        f"| accuracy | {_metric(new.get('accuracy'))} | {_metric(old.get('accuracy'))} |",
        f"| macro F1 | {_metric(new.get('macro_f1'))} | {_metric(old.get('macro_f1'))} |",
        f"| MLflow run | {run_link(decision.get('mlflow_run_id'))} "
        f"| {run_link(old.get('run_id'))} |",
        "",
    ]
    if worse:
        lines[1:1] = [
            "",
            f"> ⚠️ **This challenger is worse than {old_label}** on "
            f"{' and '.join(m.replace('_', ' ') for m in worse)}: it was registered only "
            "because registration was forced. Approving it replaces a better model.",
        ]
    if ui:
        lines += [f"Model version: {ui}/#/models/{name}/versions/{version}", ""]
    lines.append(
        "**Approve** moves `champion` to this version and deploys it; **Reject** (also "
        "the answer when nobody responds in time) records the decision and deploys nothing."
    )
    if approvers:
        names = ", ".join(f"{u.get('name') or u['id']} (`{u['id']}`)" for u in approvers)
        lines += [
            "",
            f"Only {names} may answer; the answer of anyone else is refused, even though "
            "the buttons show for every user.",
        ]
    return "\n".join(lines)


class ApprovalGate(HITLBranchOperator):
    """Ask the configured approvers whether to deploy; branch to deploy or record the rejection."""

    def __init__(
        self,
        *,
        decision_task_id: str,
        approve_task_id: str,
        reject_task_id: str,
        response_timeout: timedelta = timedelta(hours=24),
        approvers: Sequence[dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            subject="Deploy the new challenger as champion?",
            options=[APPROVE, REJECT],
            defaults=[REJECT],
            multiple=False,
            options_mapping={APPROVE: approve_task_id, REJECT: reject_task_id},
            response_timeout=response_timeout,
            **kwargs,
        )
        self.decision_task_id = decision_task_id
        self.approvers = list(approvers) if approvers else None

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        decision = context["ti"].xcom_pull(task_ids=self.decision_task_id) or {}
        users = self.approvers or configured_approvers()
        if not users:
            raise AirflowFailException(
                "no approvers configured: set FLYWHEEL_APPROVERS or the Variable flywheel_approvers"
            )
        self.assigned_users = users  # type: ignore[assignment]
        self.subject = (
            f"Deploy {decision.get('model_name')} v{decision.get('model_version')} as champion?"
        )
        self.body = approval_body(decision, mlflow_ui_url(), users)
        self.log.info("Asking %s\n%s", ", ".join(u["id"] for u in users), self.body)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # Record first: branching ends this method by raising (Airflow 3 skips downstream
        # tasks through an exception), so nothing after super() would run.
        from ml_tasks.core import events

        responder = event.get("responded_by_user") or {}
        who = str(responder.get("id") or TIMEOUT_RESPONDER)
        choice = (event.get("chosen_options") or [REJECT])[0]
        self.validate_chosen_options([choice])
        decision = context["ti"].xcom_pull(task_ids=self.decision_task_id) or {}
        record = {
            "choice": choice,
            "approved": choice == APPROVE,
            "who": who,
            "timed_out": bool(event.get("timedout")) or who == TIMEOUT_RESPONDER,
            "model_version": decision.get("model_version"),
        }
        context["ti"].xcom_push(key="decision", value=record)
        events.configure("airflow", logger=self.log)
        events.emit(
            "gate_decided",
            gate="approval",
            decision=choice.lower(),
            who=who,
            timed_out=record["timed_out"],
            model_version=decision.get("model_version"),
            dag_id=context["dag_run"].dag_id,
            run_id=context["dag_run"].run_id,
            task_id=self.task_id,
        )
        self.log.info("%s by %s", choice, who)
        return super().execute_complete(context, event)
