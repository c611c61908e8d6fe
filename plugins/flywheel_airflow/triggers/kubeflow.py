"""Wait for a Kubeflow Pipelines run on the triggerer, polling KFP's v2beta1 REST API.

A step submitted to Kubeflow runs for minutes to hours; the task defers to this trigger, so no
worker slot is held while it runs. The trigger polls the run and fires one event:
``{"status": "succeeded" | "failed" | "canceled" | "skipped" | "timeout" | "unreachable" |
"error", "message": ..., "run_id", "url"}``.

- At the deadline (the task's ``execution_timeout``, as a wall-clock time so a triggerer
  restart does not extend it) the run is cancelled and the event is ``timeout``.
- A KFP API that does not answer for ``max_unreachable`` polls in a row ends the wait with
  ``unreachable`` (the task fails and Airflow retries it); a single missed poll is retried.
- A task killed by a person (mark failed, clear) cancels the run (:meth:`on_kill`); a triggerer
  restart does not.

The REST client is :mod:`ml_tasks.pipelines.rest` (standard library only; no kfp here). The
token is read from the triggerer's environment, never stored with the trigger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import TriggerEvent

from flywheel_airflow.triggers.state import FieldsTrigger


@dataclass(kw_only=True, eq=False, repr=False)
class KubeflowRunTrigger(FieldsTrigger):
    """Poll KFP run ``run_id`` until it ends, the deadline passes, or KFP stays unreachable."""

    run_id: str
    host: str
    ui_url: str = ""
    namespace: str = ""
    deadline: float
    poll_interval: float = 10.0
    max_unreachable: int = 6

    def client(self) -> Any:
        from ml_tasks.pipelines.rest import KfpClient, KfpSettings

        return KfpClient(
            KfpSettings(host=self.host, ui_url=self.ui_url, namespace=self.namespace, timeout=15)
        )

    def _event(self, status: str, message: str) -> TriggerEvent:
        url = self.client().settings.run_url(self.run_id)
        return TriggerEvent(
            {"status": status, "message": message, "run_id": self.run_id, "url": url}
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from ml_tasks.pipelines.rest import TERMINAL, KfpError, KfpUnavailable, run_error

        client, misses = self.client(), 0
        while True:
            if time.time() >= self.deadline:
                why = await self._cancel(client)
                yield self._event("timeout", f"still running at the task's timeout; {why}")
                return
            try:
                run = await asyncio.to_thread(client.get_run, self.run_id)
                misses = 0
            except KfpUnavailable as exc:
                misses += 1
                self.log.warning("KFP poll %d/%d failed: %s", misses, self.max_unreachable, exc)
                if misses >= self.max_unreachable:
                    yield self._event("unreachable", str(exc))
                    return
            except KfpError as exc:
                yield self._event("error", str(exc))
                return
            else:
                state = str(run.get("state") or "PENDING")
                self.log.info("KFP run %s: %s", self.run_id, state)
                if state in TERMINAL:
                    message = "" if state == "SUCCEEDED" else run_error(run)
                    yield self._event(state.lower(), message)
                    return
            await asyncio.sleep(self.poll_interval)

    async def _cancel(self, client: Any) -> str:
        from ml_tasks.pipelines.rest import KfpError, KfpUnavailable

        try:
            await asyncio.to_thread(client.cancel_run, self.run_id)
        except (KfpError, KfpUnavailable) as exc:
            return f"cancelling it failed: {exc}"
        return f"run {self.run_id} cancelled"

    async def on_kill(self) -> None:
        """The task was killed by a person: cancel the run it waits for."""
        self.log.info("Task killed: %s", await self._cancel(self.client()))
