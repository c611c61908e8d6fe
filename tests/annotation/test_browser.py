"""The loop as a person drives it, in a real browser (Debian's chromium, driven by Playwright).

Against the session's local stack (the ``stack`` fixture): the approver logs in to Airflow,
triggers training with params from the trigger form, and approves in Required Actions; the
non-approver is shown the same buttons and is refused; MLflow's UI shows ``champion`` on the
new version; the stack's model service answers with it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from stack_support import Stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline: no background requests to hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def logged_in(browser: Any, stack: Stack, user: str) -> Any:
    """A page of a new browser context, signed in to Airflow's UI as ``user``."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.airflow_url + "/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", stack.passwords()[user])
    page.click("button[type=submit]")
    page.wait_for_url(stack.airflow_url + "/")
    return page


def model_version_answering(url: str) -> str | None:
    """The model version in the service's answer to one v2 request (a blank 8x8 image)."""
    body = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8], "data": [0] * 64}]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["model_version"])
    except OSError:  # not ready yet (503) or between processes
        return None


def test_a_person_trains_approves_and_the_service_follows(stack: Stack, browser: Any) -> None:
    stack.with_dataset()
    api = stack.api()

    # The approver triggers training from the form, with params.
    page = logged_in(browser, stack, "approver")
    page.goto(f"{stack.airflow_url}/dags/training")
    page.get_by_test_id("trigger-dag-button").click()
    page.fill("input[name=element_epochs]", "4")
    page.locator("label:has(input[name=element_force_register])").click()
    page.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url("**/dags/training/runs/manual__*")
    run_id = urllib.parse.unquote(page.url.split("/runs/", 1)[1].split("/")[0])
    conf = api.dag_run("training", run_id, "admin")["conf"]
    assert conf["epochs"] == 4 and conf["force_register"] is True, conf

    detail = stack.approval_request("training", "approver", timeout=900)
    assert detail["task_instance"]["dag_run_id"] == run_id, "only the run that was asked for"
    found = re.search(r"digits v(\d+) ", detail["subject"])
    assert found, detail["subject"]
    version = found[1]
    form = f"{stack.airflow_url}/dags/training/runs/{run_id}/tasks/await_approval/required_actions"

    # The non-approver sees the form and who may answer; an answer is refused.
    intruder = logged_in(browser, stack, "non-approver")
    intruder.goto(form)
    intruder.get_by_text("may answer").wait_for()  # the form says who may
    intruder.get_by_role("button", name="Approve").click()
    intruder.get_by_text("Access Denied").wait_for()
    time.sleep(2)
    assert api.task_states("training", run_id, "admin")["await_approval"] != "success"

    # The approver approves.
    page.goto(form)
    page.get_by_role("button", name="Approve").click()
    page.get_by_text("Response received").wait_for()

    assert stack.wait_for_run("training", run_id, timeout=600) == "success"

    # MLflow's UI shows champion on the new version.
    mlflow = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    mlflow.goto(f"{stack.state['mlflow']}/#/models/digits")
    row = mlflow.locator("tr, [role=row]").filter(has_text=f"Version {version}").first
    # The alias chip reads "champion"; a tag such as flywheel.previous_champion is no match.
    row.get_by_text(re.compile(r"^\W*champion$")).first.wait_for(timeout=60_000)

    # The stack's model service follows the champion without being restarted.
    service = str(stack.state["model_service"])
    assert service.startswith("http://"), service
    wait_for(lambda: model_version_answering(service) == version, 180, "the new champion")


def test_the_trigger_form_runs_only_what_was_asked(stack: Stack) -> None:
    """Unpausing (as the form's "Unpause on trigger" does) starts no hidden nightly run."""
    api = stack.api()
    runs = api.call("GET", "/dags/training/dagRuns", "admin")["dag_runs"]
    scheduled = [r["dag_run_id"] for r in runs if r["run_type"] == "scheduled"]
    assert not scheduled, f"runs nobody asked for: {scheduled}"
