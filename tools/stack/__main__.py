"""``python -m tools.stack up|down|status|env``: see :mod:`tools.stack`."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from typing import Any

from tools import label_studio_server as lss
from tools.stack import __doc__ as STACK_DOC
from tools.stack.processes import down, read_state
from tools.stack.services import up
from tools.stack.settings import (
    AWS,
    BUCKET,
    USERS,
    StackError,
    StackRefused,
    airflow_home,
    stack_env,
    state_dir,
)


def describe(state: dict[str, Any]) -> str:
    passwords_file = airflow_home() / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    ls = state["label_studio"]
    lines = [f"Airflow UI     http://127.0.0.1:{state['airflow']['port']}   logins:"]
    for user, (role, purpose) in USERS.items():
        lines.append(f"  {user:<13}{passwords.get(user, '?'):<18} {role:<6} {purpose}")
    lines += [
        "  (approvals: Browse -> Required Actions, as approver)",
        f"Label Studio   {ls['url']}   login {ls['username']} / {ls['password']}   "
        f"API token {ls['token']}",
        f"MLflow         {state['mlflow']}",
        f"Optuna         {state.get('optuna_dashboard')}   (studies of ml_tasks.tune)",
        f"S3             {state['s3']}   bucket {BUCKET}   keys {AWS['AWS_ACCESS_KEY_ID']} / "
        f"{AWS['AWS_SECRET_ACCESS_KEY']}   (objects kept in {state_dir() / 's3'})",
        f"Model service  {state.get('model_service')}   (follows the champion; "
        "/v2/health/ready says why it is not ready yet)",
        f"Registry       {state.get('registry') or state.get('registry_note')}   "
        "(make push with REGISTRY and PROJECT from the environment above)",
        f"Logs           {state_dir()}",
        'Environment    eval "$(python -m tools.stack env)"',
        "Stop           python -m tools.stack down   (everything is kept for the next up)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description=(STACK_DOC or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start everything and print URLs and logins")
    start.add_argument("--no-serve", action="store_true", help="do not start the model service")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="print URLs and logins of the running stack")
    sub.add_parser("env", help="print `export` lines for a shell that uses the stack")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            try:
                print(describe(up(serve=not args.no_serve)))
            except StackRefused:
                raise  # nothing was started: a running stack stays up
            except (StackError, lss.LabelStudioError, subprocess.CalledProcessError):
                down()
                raise
        elif args.command == "down":
            print("stopped: " + (", ".join(down()) or "nothing was running"))
        else:
            state = read_state()
            if not state.get("services"):
                print("the stack is not running", file=sys.stderr)
                return 1
            if args.command == "status":
                print(describe(state))
            else:
                import shlex

                for key, value in stack_env(state).items():
                    print(f"export {key}={shlex.quote(value)}")
    except (StackError, lss.LabelStudioError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
