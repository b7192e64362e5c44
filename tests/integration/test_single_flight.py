"""The lease and the refresh rules one at a time: fencing, min_ttl, forced refresh, pre-warm."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from tests.api_calls import body, invoke
from token_vendor.aws.token_cipher import TokenCipher
from token_vendor.aws.token_table import TokenTable
from token_vendor.config import load_config
from token_vendor.functions import maintenance
from token_vendor.functions.runtime import reset_runtime
from token_vendor.models import CachedToken, cache_key


def _table(stack: LocalStack) -> TokenTable:
    return TokenTable(
        stack.dynamodb(), stack.table_name, TokenCipher(stack.kms(), stack.kms_key_arn)
    )


def _token(name: str, now: float) -> CachedToken:
    return CachedToken(name, "Bearer", now, int(now + 3600), "v1")


def test_a_commit_after_losing_the_lease_is_refused(stack: LocalStack) -> None:
    # Given holder A took a short lease that has run out, and holder B took it over
    table = _table(stack)
    now = time.time()
    assert table.try_acquire_lease(
        "k", owner="A", now=now, lease_until=now + 0.2, seen_fingerprint=None
    )[0]
    assert not table.try_acquire_lease(
        "k", owner="B", now=now, lease_until=now + 5, seen_fingerprint=None
    )[0]
    later = now + 0.3
    assert table.try_acquire_lease(
        "k", owner="B", now=later, lease_until=later + 5, seen_fingerprint=None
    )[0]
    # When B commits its token and A, late, tries to commit its own
    assert table.commit("k", owner="B", token=_token("token-of-b", later), now=later)[0]
    committed, current = table.commit("k", owner="A", token=_token("token-of-a", later), now=later)
    # Then A's commit is refused, the refusal carries the current item, and B's token stays
    assert not committed
    assert current is not None
    assert current.token is not None
    assert current.token.access_token == "token-of-b"
    record = table.get("k")
    assert record is not None
    assert record.token is not None
    assert record.token.access_token == "token-of-b"
    assert record.lease_owner is None


def test_a_lease_is_refused_when_the_token_changed_since_it_was_judged(stack: LocalStack) -> None:
    # Given a token committed after an environment last read the item
    table = _table(stack)
    now = time.time()
    table.try_acquire_lease("k", owner="A", now=now, lease_until=now + 5, seen_fingerprint=None)
    table.commit("k", owner="A", token=_token("fresh", now), now=now)
    # When another environment, which saw no token, tries to refresh
    acquired, current = table.try_acquire_lease(
        "k", owner="B", now=now, lease_until=now + 5, seen_fingerprint=None
    )
    # Then it is refused and handed the fresh token instead of refreshing again
    assert not acquired
    assert current is not None
    assert current.token is not None
    assert current.token.access_token == "fresh"


def test_min_ttl_within_the_cached_token_is_served_from_cache(
    stack: LocalStack, igni_stub: Any
) -> None:
    invoke(load_event("get_token"))
    response = invoke(load_event("get_token_min_ttl"))
    assert response["statusCode"] == 200
    assert body(response)["expires_in"] >= 3600
    assert len(igni_stub.calls()) == 1


def test_min_ttl_beyond_the_cached_token_refreshes(stack: LocalStack, igni_stub: Any) -> None:
    # Given a 60 s token fetched 7 s ago (53 s left: the table says so, and the memory tier of
    # this environment is gone)
    igni_stub.configure(lifetime=60)
    first = body(invoke(load_event("get_token")))
    key = cache_key(load_config().profiles["default"])
    table = stack.dynamodb()
    item = table.get_item(TableName=stack.table_name, Key={"pk": {"S": key}})["Item"]
    table.update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": key}},
        UpdateExpression="SET issued_at = :issued, expires_at = :expires",
        ExpressionAttributeValues={
            ":issued": {"N": str(float(item["issued_at"]["N"]) - 7)},
            ":expires": {"N": str(int(item["expires_at"]["N"]) - 7)},
        },
    )
    reset_runtime()
    # When a caller needs 54 s, which only a fresh token can give (60 - 10 % margin)
    response = invoke(load_event("get_token", queryStringParameters={"min_ttl": "54"}))
    # Then a new token is exchanged and vended
    assert response["statusCode"] == 200
    assert body(response)["access_token"] != first["access_token"]
    assert body(response)["expires_in"] >= 54
    assert len(igni_stub.calls()) == 2


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "9999999999", " 5", "٣"])
def test_a_bad_min_ttl_is_400_invalid_request(stack: LocalStack, value: str) -> None:
    response = invoke(load_event("get_token", queryStringParameters={"min_ttl": value}))
    assert response["statusCode"] == 400
    assert body(response)["error"] == "invalid_request"


def test_min_ttl_beyond_what_a_fresh_token_gives_is_400(stack: LocalStack, igni_stub: Any) -> None:
    invoke(load_event("get_token"))
    response = invoke(load_event("get_token", queryStringParameters={"min_ttl": "172700"}))
    assert response["statusCode"] == 400
    assert "172500" in body(response)["message"]
    assert len(igni_stub.calls()) == 1


@pytest.mark.parametrize(
    "raw_body",
    ["not json", "[]", '{"rejected_token": 5}', '{"rejected_token": ""}', "{}", None],
)
def test_a_bad_refresh_body_is_400_invalid_request(stack: LocalStack, raw_body: str | None) -> None:
    response = invoke(load_event("post_refresh", body=raw_body))
    assert response["statusCode"] == 400
    assert body(response)["error"] == "invalid_request"


def test_reporting_a_replaced_token_returns_the_current_one_without_upstream_call(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given a token that a forced refresh replaced
    old = body(invoke(load_event("get_token")))["access_token"]
    current = body(invoke(load_event("post_refresh", body=json.dumps({"rejected_token": old}))))[
        "access_token"
    ]
    assert current != old
    # When a new environment's caller reports the replaced token
    reset_runtime()
    response = invoke(load_event("post_refresh", body=json.dumps({"rejected_token": old})))
    # Then it gets the current token and Igni is not called again
    assert body(response)["access_token"] == current
    assert len(igni_stub.calls()) == 2


def test_a_refresh_is_not_a_read_a_token_never_vended_is_409(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given a current token (a caller allowed only POST .../refresh might try to read it)
    current = body(invoke(load_event("get_token")))["access_token"]
    # When something this service never vended is reported
    response = invoke(load_event("post_refresh", body=json.dumps({"rejected_token": "junk"})))
    # Then it is 409 unknown_token, with no token in the answer and no call to Igni
    assert response["statusCode"] == 409
    assert body(response)["error"] == "unknown_token"
    assert current not in response["body"]
    assert len(igni_stub.calls()) == 1


def test_forced_refresh_is_rate_limited_per_credential(stack: LocalStack, igni_stub: Any) -> None:
    # Given a token reported once and replaced
    first = body(invoke(load_event("get_token")))["access_token"]
    second = body(invoke(load_event("post_refresh", body=json.dumps({"rejected_token": first}))))[
        "access_token"
    ]
    assert second != first
    # When the replacement is reported as rejected within 30 s
    reset_runtime()
    response = invoke(load_event("post_refresh", body=json.dumps({"rejected_token": second})))
    # Then the answer is 429 with Retry-After, and Igni was not called again
    assert response["statusCode"] == 429
    assert body(response)["error"] == "refresh_rate_limited"
    assert len(igni_stub.calls()) == 2


def test_the_forced_refresh_interval_is_configurable(
    stack: LocalStack, igni_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCED_REFRESH_INTERVAL_SECONDS", "0")
    reset_runtime()
    token = body(invoke(load_event("get_token")))["access_token"]
    for _ in range(2):
        token = body(
            invoke(load_event("post_refresh", body=json.dumps({"rejected_token": token})))
        )["access_token"]
    assert len(igni_stub.calls()) == 3


def test_prewarm_refreshes_only_a_token_past_its_refresh_point(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given no token yet: pre-warm mints one
    assert maintenance.lambda_handler(load_event("prewarm"), FakeLambdaContext())["ok"]
    assert len(igni_stub.calls()) == 1
    # And a fresh token: pre-warm leaves it
    maintenance.lambda_handler(load_event("prewarm"), FakeLambdaContext())
    assert len(igni_stub.calls()) == 1
    # When the token passes its refresh point (aged in the table: 80 % of its life gone)
    config = load_config()
    key = cache_key(config.profiles["default"])
    issued = int(time.time()) - 172800 * 8 // 10
    stack.dynamodb().update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": key}},
        UpdateExpression="SET issued_at = :issued, expires_at = :expires",
        ExpressionAttributeValues={
            ":issued": {"N": str(issued)},
            ":expires": {"N": str(issued + 172800)},
        },
    )
    reset_runtime()
    result = maintenance.lambda_handler(load_event("prewarm"), FakeLambdaContext())
    # Then pre-warm refreshes it
    assert result == {"ok": True, "profiles": {"default": "upstream"}}
    assert len(igni_stub.calls()) == 2


def test_a_failed_prewarm_raises_so_lambda_retries_and_counts_it(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given Igni refusing the credentials
    igni_stub.configure(clients={"nobody": "nothing"})
    # When the schedule fires
    with pytest.raises(maintenance.AsyncEventFailed, match="upstream_auth_failed"):
        maintenance.lambda_handler(load_event("prewarm"), FakeLambdaContext())
    # Then the invocation failed (Lambda retries it, then the dead-letter queue gets it)
    assert len(igni_stub.calls()) == 1


def test_a_rotation_whose_new_key_fails_is_logged_counted_and_raised(
    stack: LocalStack, igni_stub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a token from the current key, then a new version Igni does not accept
    invoke(load_event("get_token"))
    stack.put_secret_value({"client_id": "rotated-client", "client_secret": "rotated-secret"})
    capsys.readouterr()
    # When Secrets Manager announces the new AWSCURRENT
    event = load_event("secret_label_updated", secret_arn=stack.secret_arn)
    with pytest.raises(maintenance.AsyncEventFailed, match="rotation failed"):
        maintenance.lambda_handler(event, FakeLambdaContext())
    # Then the failure is counted as RotationExchangeFailures (the alarm's metric)
    emitted = capsys.readouterr().out
    metrics = [json.loads(line) for line in emitted.splitlines() if '"_aws"' in line]
    assert any(m.get("RotationExchangeFailures") == [1.0] for m in metrics)
    assert "rotated-secret" not in emitted


def test_a_refresh_failure_while_valid_is_counted_once(
    stack: LocalStack, igni_stub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a token past its refresh point (aged in the table) and Igni failing
    token = body(invoke(load_event("get_token")))["access_token"]
    key = cache_key(load_config().profiles["default"])
    issued = int(time.time()) - 172800 * 8 // 10
    stack.dynamodb().update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": key}},
        UpdateExpression="SET issued_at = :issued, expires_at = :expires",
        ExpressionAttributeValues={
            ":issued": {"N": str(issued)},
            ":expires": {"N": str(issued + 172800)},
        },
    )
    igni_stub.configure(faults=[{"status": 500}] * 3)
    reset_runtime()
    capsys.readouterr()
    # When a caller asks
    assert body(invoke(load_event("get_token")))["access_token"] == token
    # Then the failed refresh is one RefreshFailures, and one RefreshFailuresWhileValid
    metrics = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    assert sum(1 for m in metrics if "RefreshFailures" in m) == 1
    assert sum(1 for m in metrics if "RefreshFailuresWhileValid" in m) == 1
