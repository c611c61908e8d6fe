"""The local stack's fixed ports and logins (no servers; ``tests/annotation/test_stack.py``
starts the real stack)."""

from __future__ import annotations

import socket

import pytest

from tools import stack


@pytest.fixture(autouse=True)
def no_port_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, _ in stack.PORTS.values():
        monkeypatch.delenv(variable, raising=False)


def test_every_service_has_a_fixed_default_port_and_a_variable_to_move_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert stack.ports() == {
        "s3": 9000,
        "mlflow": 5000,
        "label_studio": 8080,
        "airflow": 8081,
        "model_service": 8085,
        "registry": 5050,
        "optuna_dashboard": 8083,
    }
    monkeypatch.setenv("FLYWHEEL_STACK_MLFLOW_PORT", "15000")
    assert stack.ports()["mlflow"] == 15000


@pytest.mark.parametrize("value", ["http", "0", "70000"])
def test_a_port_that_is_no_port_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLYWHEEL_STACK_S3_PORT", value)
    with pytest.raises(stack.StackRefused, match="FLYWHEEL_STACK_S3_PORT"):
        stack.ports()


def test_a_taken_port_names_the_port_the_service_and_the_variable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(stack.StackRefused) as refused:
            stack.check_ports_free({"label_studio": port})
    message = str(refused.value)
    assert f"port {port} for label studio is taken" in message
    assert "FLYWHEEL_STACK_LABEL_STUDIO_PORT=PORT" in message


def test_airflow_has_an_approver_and_a_non_approver_with_the_same_role() -> None:
    state = {
        "s3": "http://127.0.0.1:9000",
        "mlflow": "http://127.0.0.1:5000",
        "label_studio": {"url": "http://127.0.0.1:8080", "token": "t"},
    }
    env = stack.stack_env(state)
    users = dict(u.split(":") for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert users == {"admin": "admin", "approver": "user", "non-approver": "user"}
    assert env["FLYWHEEL_APPROVERS"].split(":")[0] == "approver"
