"""GET /token end to end: the handler on events/ against a moto server and the Igni stub.

Every row of the error table, both cache tiers, the TTL value, the headers, and nothing secret
in the logs or the table.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from token_vendor.functions import api as handler
from token_vendor.functions import maintenance
from token_vendor.functions.runtime import current_runtime, reset_runtime
from token_vendor.observability import logger as powertools_logger

STUB_CLIENT_SECRET = "test-secret-0123456789"


def invoke(event: dict[str, Any], timeout_s: float = 25.0) -> dict[str, Any]:
    return handler.lambda_handler(event, FakeLambdaContext(timeout_s=timeout_s))


def headers_of(response: dict[str, Any]) -> dict[str, str]:
    merged = dict((response.get("headers") or {}).items())
    for key, values in (response.get("multiValueHeaders") or {}).items():
        merged[key] = values[-1]
    return {k.lower(): v for k, v in merged.items()}


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"])
    return body


def assert_error(response: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    assert response["statusCode"] == status, response
    body = body_of(response)
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert set(body) == {"error", "message"}
    headers = headers_of(response)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    return body


def test_get_token_answers_the_contract(stack: LocalStack, igni_stub: Any) -> None:
    # Given a fresh stack and the stub issuing 48 h tokens
    # When a signed caller asks for a token
    before = time.time()
    response = invoke(load_event("get_token"))
    # Then it is a 200 with the token, its remaining lifetime and expiry, and no-store headers
    assert response["statusCode"] == 200
    body = body_of(response)
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at"}
    assert body["token_type"] == "Bearer"
    assert body["access_token"].count(".") == 2
    assert 172800 - 5 <= body["expires_in"] <= 172800
    assert before + 172800 - 5 <= body["expires_at"] <= time.time() + 172800
    headers = headers_of(response)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["pragma"] == "no-cache"
    assert len(igni_stub.calls()) == 1


def test_the_table_item_ttl_is_the_token_expiry_and_holds_nothing_in_clear(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given a vended token
    body = body_of(invoke(load_event("get_token")))
    # When the table is scanned as any read-only role could
    items = stack.dynamodb().scan(TableName=stack.table_name)["Items"]
    # Then one item holds it, its TTL attribute is the expiry, and neither the token nor the
    # client secret appears anywhere in it
    assert len(items) == 1
    item = items[0]
    assert int(item["expires_at"]["N"]) == body["expires_at"]
    dumped = repr(item)
    assert body["access_token"] not in dumped
    assert body["access_token"].split(".")[1] not in dumped
    assert STUB_CLIENT_SECRET not in dumped
    # And it is encrypted by KMS (a token under 4 KB): the blob is not the token's bytes
    assert item["enc"]["S"] == "kms"
    assert body["access_token"].encode() not in bytes(item["tok"]["B"])


def test_repeat_calls_are_answered_from_memory(stack: LocalStack, igni_stub: Any) -> None:
    # Given a token fetched once
    first = body_of(invoke(load_event("get_token")))
    # And the shared tier emptied behind the environment's back
    stack.dynamodb().delete_item(
        TableName=stack.table_name,
        Key={"pk": stack.dynamodb().scan(TableName=stack.table_name)["Items"][0]["pk"]},
    )
    # When asked again
    second = body_of(invoke(load_event("get_token")))
    # Then the same token comes from memory, without Igni and without the table
    assert second["access_token"] == first["access_token"]
    assert len(igni_stub.calls()) == 1


def test_a_cold_environment_is_answered_from_dynamodb(stack: LocalStack, igni_stub: Any) -> None:
    # Given a token minted by one execution environment
    first = body_of(invoke(load_event("get_token")))
    # When a new environment (fresh memory) asks
    reset_runtime()
    second = body_of(invoke(load_event("get_token")))
    # Then it gets the same token from the shared tier, with no upstream call
    assert second["access_token"] == first["access_token"]
    assert second["expires_at"] == first["expires_at"]
    assert len(igni_stub.calls()) == 1


def test_expires_in_is_the_remaining_lifetime_not_the_original(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given a 60 s token fetched, and over a second later a cold environment
    igni_stub.configure(lifetime=60)
    first = body_of(invoke(load_event("get_token")))
    time.sleep(1.1)
    reset_runtime()
    second = body_of(invoke(load_event("get_token")))
    # Then the second answer counts down from the same expiry
    assert second["expires_at"] == first["expires_at"]
    assert second["expires_in"] <= first["expires_in"] - 1


def test_an_expired_item_is_never_served_even_before_ttl_deletion(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given an item whose expiry has passed (TTL deletion lags by days)
    first = body_of(invoke(load_event("get_token")))
    ddb = stack.dynamodb()
    key = ddb.scan(TableName=stack.table_name)["Items"][0]["pk"]
    ddb.update_item(
        TableName=stack.table_name,
        Key={"pk": key},
        UpdateExpression="SET expires_at = :past, issued_at = :issued",
        ExpressionAttributeValues={
            ":past": {"N": str(int(time.time()) - 10)},
            ":issued": {"N": str(int(time.time()) - 1000)},
        },
    )
    # When a cold environment asks
    reset_runtime()
    second = body_of(invoke(load_event("get_token")))
    # Then a new token is exchanged instead
    assert second["access_token"] != first["access_token"]
    assert len(igni_stub.calls()) == 2


# ------------------------------------------------------------------------ the error table


def test_no_iam_identity_is_403_access_denied(stack: LocalStack, igni_stub: Any) -> None:
    assert_error(invoke(load_event("get_token_no_identity")), 403, "access_denied")
    assert igni_stub.calls() == []


def test_unknown_path_is_404_not_found(stack: LocalStack) -> None:
    assert_error(invoke(load_event("get_unknown_path")), 404, "not_found")


def test_wrong_method_is_405_method_not_allowed(stack: LocalStack) -> None:
    response = invoke(load_event("delete_token"))
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in headers_of(response)["allow"]


@pytest.mark.parametrize(
    ("secret_value", "fragment"),
    [
        ("not json", "not JSON"),
        ('{"client_secret": "x"}', "client_id"),
        ('{"client_id": "x"}', "client_secret"),
        ('{"client_id": "", "client_secret": ""}', "client_id"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_a_bad_secret_is_500_configuration_error(
    stack: LocalStack, igni_stub: Any, secret_value: str, fragment: str
) -> None:
    # Given the secret holds something unusable
    stack.put_secret_value(secret_value)
    # When a token is asked for
    body = assert_error(invoke(load_event("get_token")), 500, "configuration_error")
    # Then the message says what is wrong, and nothing of the value leaks
    assert fragment in body["message"]
    assert igni_stub.calls() == []


def test_a_missing_secret_is_500_configuration_error(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IGNI_SECRET_ID", "igni/does-not-exist")
    reset_runtime()
    body = assert_error(invoke(load_event("get_token")), 500, "configuration_error")
    # The message says what is wrong; the secret's name goes to the log line only (issue 10)
    assert "could not be read (ResourceNotFoundException)" in body["message"]
    assert "igni/does-not-exist" not in json.dumps(body)


def test_no_workspace_and_no_token_url_is_500_configuration_error(
    stack: LocalStack, igni_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a secret without a workspace, and neither IGNI_WORKSPACE nor IGNI_TOKEN_URL
    stack.put_secret_value(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    monkeypatch.delenv("IGNI_TOKEN_URL", raising=False)
    monkeypatch.delenv("IGNI_WORKSPACE", raising=False)
    reset_runtime()
    body = assert_error(invoke(load_event("get_token")), 500, "configuration_error")
    assert "workspace" in body["message"]


def test_a_plain_http_token_url_is_500_configuration_error(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IGNI_TOKEN_URL", "http://igni.example.com/api/v1/oauth2/token")
    reset_runtime()
    body = assert_error(invoke(load_event("get_token")), 500, "configuration_error")
    assert "https" in body["message"]


def test_missing_table_setting_is_500_configuration_error(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKEN_TABLE_NAME")
    reset_runtime()
    assert_error(invoke(load_event("get_token")), 500, "configuration_error")


def test_invalid_client_is_502_upstream_auth_failed(stack: LocalStack, igni_stub: Any) -> None:
    # Given Igni no longer knows the client
    igni_stub.configure(clients={"someone-else": "x"})
    # When a token is asked for
    assert_error(invoke(load_event("get_token")), 502, "upstream_auth_failed")
    # Then Igni was asked once: a 401 is not retried
    assert len(igni_stub.calls()) == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"garbage": True},
        {"status": 200, "body": {"token_type": "Bearer", "expires_in": 100}},
        {"status": 200, "body": {"access_token": "abc", "expires_in": -5}},
        {"status": 200, "body": {"access_token": "abc", "expires_in": 1.5}},
    ],
)
def test_a_2xx_without_a_usable_token_is_502_upstream_bad_response(
    stack: LocalStack, igni_stub: Any, fault: dict[str, Any]
) -> None:
    igni_stub.configure(faults=[fault])
    assert_error(invoke(load_event("get_token")), 502, "upstream_bad_response")


@pytest.mark.parametrize(
    "faults",
    [
        [{"status": 500}] * 3,
        [{"status": 429, "retry_after": 1}] * 3,
        [{"status": 503}] * 3,
        [{"close": True}] * 3,
    ],
)
def test_igni_failing_after_retries_is_503_with_retry_after(
    stack: LocalStack, igni_stub: Any, faults: list[dict[str, Any]]
) -> None:
    # Given Igni keeps failing
    igni_stub.configure(faults=faults)
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then the answer is 503 with a Retry-After, after a bounded number of attempts
    assert_error(response, 503, "upstream_unavailable")
    assert int(headers_of(response)["retry-after"]) >= 1
    assert len(igni_stub.calls()) == 3


def test_igni_timing_out_is_503_within_the_invocation_deadline(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given Igni answers after 20 s and the function has 4 s left
    igni_stub.configure(faults=[{"delay_ms": 20000}] * 3)
    started = time.monotonic()
    response = invoke(load_event("get_token"), timeout_s=4.0)
    # Then the caller gets 503 before the function would time out
    assert_error(response, 503, "upstream_unavailable")
    assert time.monotonic() - started < 4.0


def test_one_transient_failure_is_retried_transparently(stack: LocalStack, igni_stub: Any) -> None:
    igni_stub.configure(faults=[{"status": 503}])
    assert invoke(load_event("get_token"))["statusCode"] == 200
    assert [c["status"] for c in igni_stub.calls()] == [503, 200]


def test_a_malformed_event_is_a_json_400(stack: LocalStack) -> None:
    event = load_event("get_token")
    event["headers"] = ["not", "a", "dict"]
    assert_error(invoke(event), 400, "invalid_request")
    assert_error(handler.lambda_handler("nonsense", FakeLambdaContext()), 400, "invalid_request")


@pytest.mark.parametrize("name", ["prewarm", "secret_label_updated"])
def test_a_schedule_or_rotation_event_sent_to_the_api_function_is_a_json_400(
    stack: LocalStack, igni_stub: Any, name: str
) -> None:
    # Given the pre-warm schedule's or the rotation rule's event, invoked directly on the API
    # function (in the template only the maintenance function receives them)
    event = load_event(name, secret_arn=stack.secret_arn, secret_name=stack.secret_name)
    # When the API function gets it
    body = assert_error(invoke(event), 400, "invalid_request")
    # Then it says what the function takes, and nothing was done: no runtime, no Igni call
    assert body["message"] == (
        "this function takes API Gateway REST events only (no httpMethod or requestContext)"
    )
    assert current_runtime() is None
    assert igni_stub.calls() == []


@pytest.mark.parametrize("event", [load_event("get_token"), load_event("post_refresh"), {}, "x"])
def test_the_maintenance_function_refuses_an_api_or_unknown_event(
    stack: LocalStack, igni_stub: Any, event: Any
) -> None:
    # Given an API Gateway request (or anything but the schedule's or the rule's event)
    # When the maintenance function gets it
    answer = maintenance.lambda_handler(event, FakeLambdaContext())
    # Then it is refused with the contract's unsupported_event, saying what it takes, and
    # nothing was done: no runtime, no Igni call
    assert answer == {
        "ok": False,
        "error": "unsupported_event",
        "message": "the maintenance function takes the pre-warm schedule's event "
        '{"action": "prewarm"} and Secrets Manager\'s Secret Label Updated events only',
    }
    assert current_runtime() is None
    assert igni_stub.calls() == []


@pytest.fixture
def log_output(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """Everything the function logs: Powertools log lines (formatted) and EMF metric lines."""
    buffer = io.StringIO()
    stream = logging.StreamHandler(buffer)
    stream.setFormatter(powertools_logger.registered_formatter)
    std_logger = logging.getLogger(powertools_logger.name)
    std_logger.addHandler(stream)

    def read() -> str:
        captured = capsys.readouterr()
        return buffer.getvalue() + captured.out + captured.err

    yield read
    std_logger.removeHandler(stream)


def test_logs_never_carry_the_token_or_the_secret(
    stack: LocalStack, igni_stub: Any, log_output: Callable[[], str]
) -> None:
    # Given a full run: a miss, a memory hit, a cold DynamoDB hit and an auth failure
    token = body_of(invoke(load_event("get_token")))["access_token"]
    invoke(load_event("get_token"))
    reset_runtime()
    invoke(load_event("get_token"))
    stack.put_secret_value(
        {"client_id": igni_stub.client_id, "client_secret": "wrong-secret-value"}
    )
    igni_stub.configure(lifetime=60)
    reset_runtime()
    invoke(load_event("get_token", queryStringParameters={"min_ttl": "172700"}))
    # When every log line is read
    text = log_output()
    # Then there is an audit line per vend with the caller, and no secret or token anywhere
    audits = [json.loads(line) for line in text.splitlines() if '"token vended"' in line]
    assert len(audits) >= 3
    assert all(a["caller_arn"].startswith("arn:aws:iam::") for a in audits)
    assert {a["tier"] for a in audits} >= {"upstream", "memory", "dynamodb"}
    assert token not in text
    assert token.split(".")[1] not in text
    assert STUB_CLIENT_SECRET not in text
    assert "wrong-secret-value" not in text
