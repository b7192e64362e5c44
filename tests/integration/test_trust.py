"""Issue 10's holes in the vending logic, each replayed as the attacker's pass found it.

A caller must not be able to take the fleet's valid token away (a forced refresh keeps it until
its replacement is committed), `Retry-After` must tell the truth about the shared backoff, and
no error body may name a resource (ARN, secret name, table name, account id): those go to the
log line of the same request only. Real moto server and Igni stub; other execution
environments are processes of their own.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.environment import EnvironmentProcess
from local.events import load_event
from local.igni_stub import StubProcess
from local.stack import LocalStack
from tests.api_calls import body, header, invoke
from tests.conftest import MakeStack
from token_vendor.functions.runtime import reset_runtime
from token_vendor.observability import logger as powertools_logger


def the_item(stack: LocalStack) -> dict[str, Any]:
    items = stack.dynamodb().scan(TableName=stack.table_name, ConsistentRead=True)["Items"]
    assert len(items) == 1, items
    return items[0]


@pytest.fixture
def other_environment(stack: LocalStack, tmp_path: Path) -> Iterator[EnvironmentProcess]:
    """A second, cold execution environment of the same stack, in a process of its own."""
    environment = EnvironmentProcess(stack.function_env(), log_path=tmp_path / "other.log")
    yield environment
    environment.close()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the function logs in this process, one JSON line per record."""
    stream = io.StringIO()
    sink = logging.StreamHandler(stream)
    sink.setFormatter(powertools_logger.registered_formatter)
    std_logger = logging.getLogger(powertools_logger.name)
    std_logger.addHandler(sink)
    yield stream
    std_logger.removeHandler(sink)


# ------------------------------------------------------- hole 2: a report wipes nothing


def test_a_failed_forced_refresh_leaves_every_other_caller_the_valid_token(
    stack: LocalStack, igni_stub: StubProcess, other_environment: EnvironmentProcess
) -> None:
    # Given a token vended and shared through the table
    token = body(invoke(load_event("get_token")))["access_token"]
    # And Igni failing from now on
    igni_stub.configure(faults=[{"status": 500}] * 20)
    calls = len(igni_stub.calls())

    # When a caller reports that (still vendable) token as rejected
    reset_runtime()
    reported = invoke(load_event("post_refresh", body=json.dumps({"rejected_token": token})))

    # Then the reporter gets the error
    assert reported["statusCode"] == 503
    assert body(reported)["error"] == "upstream_unavailable"
    attempts = len(igni_stub.calls()) - calls
    assert attempts >= 1
    # And the token is still in the table, not removed before a replacement was committed
    assert "tok" in the_item(stack)
    # And every other caller keeps getting it: a cold environment of its own
    for _ in range(3):
        answer = other_environment.invoke(load_event("get_token"), timeout_ms=8000)
        assert answer["statusCode"] == 200, answer
        assert body(answer)["access_token"] == token
    # And this environment too, after it forgot everything
    reset_runtime()
    assert body(invoke(load_event("get_token")))["access_token"] == token
    # And nobody called Igni again for it
    assert len(igni_stub.calls()) == calls + attempts


def test_a_forced_refresh_replaces_the_token_for_everyone_once_committed(
    stack: LocalStack, igni_stub: StubProcess, other_environment: EnvironmentProcess
) -> None:
    # Given a token vended and shared
    token = body(invoke(load_event("get_token")))["access_token"]
    # When it is reported as rejected and Igni answers
    replaced = body(invoke(load_event("post_refresh", body=json.dumps({"rejected_token": token}))))
    # Then the replacement is what every caller gets from then on
    assert replaced["access_token"] != token
    answer = other_environment.invoke(load_event("get_token"), timeout_ms=8000)
    assert body(answer)["access_token"] == replaced["access_token"]
    assert len(igni_stub.calls()) == 2


# ----------------------------------------------------- hole 8: Retry-After tells the truth


def test_retry_after_is_the_time_until_the_fleet_tries_igni_again(
    stack: LocalStack,
    igni_stub: StubProcess,
    other_environment: EnvironmentProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a shared backoff longer than the Igni client's own retry hint, and Igni failing
    monkeypatch.setenv("REFRESH_BACKOFF_BASE_SECONDS", "10")
    reset_runtime()
    igni_stub.configure(faults=[{"status": 500}] * 20)

    # When a caller asks and the exchange fails
    first = invoke(load_event("get_token"))
    answered_at = time.time()
    calls = len(igni_stub.calls())

    # Then the 503's Retry-After reaches the end of the backoff the fleet now keeps
    assert first["statusCode"] == 503
    retry_after = int(header(first, "Retry-After"))
    backoff_until = float(the_item(stack)["backoff_until"]["N"])
    assert answered_at + retry_after >= backoff_until
    assert retry_after <= backoff_until - answered_at + 1.5
    # And a caller in another environment during the backoff is told the same instant
    second = other_environment.invoke(load_event("get_token"), timeout_ms=8000)
    second_at = time.time()
    assert second["statusCode"] == 503
    second_retry = int(header(second, "Retry-After"))
    assert second_at + second_retry >= backoff_until
    assert second_retry <= backoff_until - second_at + 1.5
    # And Igni was not called during the backoff
    assert len(igni_stub.calls()) == calls


def test_a_caller_waiting_retry_after_is_not_refused_for_the_backoff(
    stack: LocalStack, igni_stub: StubProcess
) -> None:
    # Given Igni failing once (every attempt of one exchange), then recovering
    igni_stub.configure(faults=[{"status": 500}] * 3)
    first = invoke(load_event("get_token"))
    assert first["statusCode"] == 503
    retry_after = int(header(first, "Retry-After"))
    assert retry_after <= 2
    # When the caller waits as told
    time.sleep(retry_after)
    again = invoke(load_event("get_token"))
    # Then it is not refused with "backing off": the fleet tried again, and got a token
    assert again["statusCode"] == 200, again
    assert len(igni_stub.calls()) == 4


def test_during_the_backoff_the_error_keeps_its_kind(
    stack: LocalStack, igni_stub: StubProcess, other_environment: EnvironmentProcess
) -> None:
    # Given Igni answering 200 with a body that is no token (a permanent bad answer)
    igni_stub.configure(faults=[{"garbage": True}] * 20)
    first = invoke(load_event("get_token"))
    assert first["statusCode"] == 502
    assert body(first)["error"] == "upstream_bad_response"
    # When other callers ask during the backoff (warm, then another environment)
    warm = invoke(load_event("get_token"))
    cold = other_environment.invoke(load_event("get_token"), timeout_ms=8000)
    # Then they get the same status and code, with Retry-After, and Igni is not called again
    for answer in (warm, cold):
        assert answer["statusCode"] == 502, answer
        assert body(answer)["error"] == "upstream_bad_response"
        assert int(header(answer, "Retry-After")) >= 1
    assert len(igni_stub.calls()) == 1


# -------------------------------------------------- hole 5: error bodies name no resource


def _needles(stack: LocalStack) -> dict[str, str]:
    return {
        "secret ARN": stack.secret_arn,
        "secret name": stack.secret_name,
        "table name": stack.table_name,
        "account id": stack.account_id,
        "an ARN": "arn:",
    }


BROKEN_SECRETS = {
    "not JSON": "not json",
    "not an object": "[1, 2]",
    "no client_secret": '{"client_id": "only-an-id"}',
    "workspace not a string": '{"client_id": "a", "client_secret": "b", "workspace": 5}',
}


@pytest.mark.parametrize("breakage", [*BROKEN_SECRETS, "deleted"])
def test_an_error_body_names_no_arn_secret_table_or_account(
    make_stack: MakeStack, breakage: str, log_lines: io.StringIO
) -> None:
    # Given a secret broken in this way
    stack = make_stack()
    if breakage == "deleted":
        stack.secretsmanager().delete_secret(
            SecretId=stack.secret_arn, ForceDeleteWithoutRecovery=True
        )
    else:
        stack.put_secret_value(BROKEN_SECRETS[breakage])
    # When a caller asks for a token
    response = invoke(load_event("get_token"))
    # Then the answer is the contract's error, naming no resource
    assert response["statusCode"] == 500
    assert body(response)["error"] == "configuration_error"
    for what, needle in _needles(stack).items():
        assert needle not in response["body"], what
    # And the log line of the same request names the secret, for the operator
    failures = [
        json.loads(line) for line in log_lines.getvalue().splitlines() if '"request failed"' in line
    ]
    assert failures
    assert any(stack.secret_arn in str(record.get("detail")) for record in failures)


def test_a_profile_secret_that_does_not_exist_is_not_named_in_the_answer(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a profile whose secret ARN names a secret that does not exist
    missing = stack.secret_arn.replace(stack.secret_name, "someone-elses/secret")
    monkeypatch.setenv("IGNI_PROFILES", json.dumps({"other": {"secret_id": missing}}))
    reset_runtime()
    # When a caller asks for that profile's token
    response = invoke(
        load_event(
            "get_token",
            path="/token/other",
            resource="/token/{profile}",
            pathParameters={"profile": "other"},
            requestContext__resourcePath="/token/{profile}",
            requestContext__path="/v1/token/other",
        )
    )
    # Then the error names neither that ARN nor its account
    assert response["statusCode"] == 500, response
    assert missing not in response["body"]
    assert "someone-elses" not in response["body"]
    assert stack.account_id not in response["body"]
