"""ConnectedStepOperator: a step that needs credentials, taken from Airflow Connections.

Steps read credentials from the environment (boto3's ``AWS_*``, ``LABEL_STUDIO_*``), never
from arguments (which show in logs and ``ps``). This operator resolves the named Connections
when the task runs (never at parse time) and hands them to the step as environment
variables:

- ``s3`` (an ``aws`` connection): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_ENDPOINT_URL`` (``extra.endpoint_url``), ``AWS_DEFAULT_REGION`` (``extra.region_name``);
- ``label_studio`` (an ``http`` connection, host = base URL, password = API token):
  ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, and ``LABEL_STUDIO_S3_ENDPOINT`` from
  ``extra.s3_endpoint`` when Label Studio reaches S3 at another address than the workers;
- ``git`` (login + password/token), optional: ``FLYWHEEL_GIT_USER``, ``FLYWHEEL_GIT_TOKEN``.

On the ``local`` backend the variables are part of the environment the step's subprocess is
started with; the worker's own ``os.environ`` never holds them, so nothing else running in
the worker (another task, a hook, a log line of the environment) sees them. On
``kubernetes`` the same names come from Kubernetes Secrets (``envFrom``) instead, and the
Connections are not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flywheel_airflow.operators.step import StepOperator

KINDS = ("s3", "label_studio", "git")


def connection_env(kind: str, conn: Any) -> dict[str, str]:
    """The environment variables a step expects for one connection."""
    extra = conn.extra_dejson or {}
    if kind == "s3":
        env = {
            "AWS_ACCESS_KEY_ID": conn.login,
            "AWS_SECRET_ACCESS_KEY": conn.password,
            "AWS_ENDPOINT_URL": extra.get("endpoint_url"),
            "AWS_DEFAULT_REGION": extra.get("region_name"),
        }
    elif kind == "label_studio":
        host = str(conn.host or "")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}{f':{conn.port}' if conn.port else ''}"
        env = {
            "LABEL_STUDIO_URL": host.rstrip("/"),
            "LABEL_STUDIO_API_KEY": conn.password,
            "LABEL_STUDIO_S3_ENDPOINT": extra.get("s3_endpoint"),
        }
    elif kind == "git":
        env = {"FLYWHEEL_GIT_USER": conn.login, "FLYWHEEL_GIT_TOKEN": conn.password}
    else:
        raise ValueError(f"unknown connection kind {kind!r}; expected one of {KINDS}")
    return {k: str(v) for k, v in env.items() if v}


class ConnectedStepOperator(StepOperator):
    """Run ``ml_tasks.<step>`` with credentials from Airflow Connections in its environment."""

    def __init__(
        self,
        *,
        connections: Mapping[str, str],
        optional_connections: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        unknown = set(connections) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown connection kinds {sorted(unknown)}; expected {KINDS}")
        self.connections = dict(connections)
        self.optional_connections = tuple(optional_connections)

    def step_environment(self) -> dict[str, str]:
        """The connections' variables, for the step's environment only (never ``os.environ``).

        A missing optional connection (``AirflowNotFoundException``, what the Task SDK raises
        for an unknown conn_id) only drops its variables; any other failure to read one (the
        API server or a secrets backend down, a malformed connection) fails the task, since
        running the step without credentials it was given would hide the fault.
        """
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        env: dict[str, str] = {}
        for kind, conn_id in self.connections.items():
            try:
                conn = BaseHook.get_connection(conn_id)
            except AirflowNotFoundException:
                if kind in self.optional_connections:
                    self.log.info("No connection %s: the step runs without %s", conn_id, kind)
                    continue
                raise
            env.update(connection_env(kind, conn))
        return env
