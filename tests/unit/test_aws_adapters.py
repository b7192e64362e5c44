"""The AWS adapters against botocore's own Stubber: real clients, every request validated against
the service model, no network. What each adapter sends (the conditional expressions, the
encryption context) and how it reads every answer, including the failures, which leave only as
domain errors. DynamoDB Local and moto play the same calls end to end in tests/integration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.stub import ANY, Stubber

from token_vendor.aws.secret_store import SecretStore
from token_vendor.aws.token_cipher import KMS, PLAIN, TokenCipher
from token_vendor.aws.token_table import TokenTable
from token_vendor.errors import ConfigurationError, SecretUnavailable, StoreUnavailable
from token_vendor.models import CachedToken

KEY = "token#abc"
TOKEN = CachedToken("tok-1", "Bearer", 1_800_000_000.0, 1_800_003_600, "v1")


def client(service: str) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        service,
        region_name="us-east-1",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="secret",
    )


@pytest.fixture
def dynamodb() -> Iterator[tuple[Any, Stubber]]:
    ddb = client("dynamodb")
    with Stubber(ddb) as stubber:
        yield ddb, stubber
        stubber.assert_no_pending_responses()


def plain_table(ddb: Any) -> TokenTable:
    return TokenTable(ddb, "tokens", TokenCipher(None, None))


# ----------------------------------------------------------------------------- TokenTable


def test_get_reads_consistently_and_builds_the_record(dynamodb: tuple[Any, Stubber]) -> None:
    ddb, stubber = dynamodb
    # Given an item with a token, a lease, a backoff and the fingerprints it replaced
    item = {
        "pk": {"S": KEY},
        "tok": {"B": b"tok-1"},
        "enc": {"S": PLAIN},
        "fp": {"S": TOKEN.fingerprint},
        "token_type": {"S": "Bearer"},
        "issued_at": {"N": "1800000000"},
        "expires_at": {"N": "1800003600"},
        "secret_version": {"S": "v1"},
        "lease_owner": {"S": "env-a"},
        "lease_until": {"N": "1800000010.5"},
        "backoff_until": {"N": "1800000020"},
        "failures": {"N": "2"},
        "failure_code": {"S": "upstream_unavailable"},
        "prev_fps": {"L": [{"S": "aaa"}, {"S": "bbb"}]},
    }
    stubber.add_response(
        "get_item",
        {"Item": item},
        {"TableName": "tokens", "Key": {"pk": {"S": KEY}}, "ConsistentRead": True},
    )
    # When it is read
    record = plain_table(ddb).get(KEY)
    # Then every field is the item's
    assert record is not None
    assert record.token == TOKEN
    assert (record.lease_owner, record.lease_until) == ("env-a", 1_800_000_010.5)
    assert (record.backoff_until, record.failures) == (1_800_000_020.0, 2)
    assert record.failure_code == "upstream_unavailable"
    assert record.recent_fingerprints == ("aaa", "bbb")
    assert record.vended("bbb")
    assert record.succession() == (TOKEN.fingerprint, "aaa", "bbb")


def test_a_missing_item_is_none(dynamodb: tuple[Any, Stubber]) -> None:
    ddb, stubber = dynamodb
    stubber.add_response(
        "get_item", {}, {"TableName": "tokens", "Key": ANY, "ConsistentRead": True}
    )
    assert plain_table(ddb).get(KEY) is None


@pytest.mark.parametrize(
    "code", ["ProvisionedThroughputExceededException", "ResourceNotFoundException"]
)
def test_a_failed_read_is_store_unavailable_naming_the_code(
    dynamodb: tuple[Any, Stubber], code: str
) -> None:
    ddb, stubber = dynamodb
    stubber.add_client_error("get_item", service_error_code=code)
    with pytest.raises(StoreUnavailable, match=code):
        plain_table(ddb).get(KEY)


def test_the_lease_is_taken_fenced_on_the_token_judged(dynamodb: tuple[Any, Stubber]) -> None:
    ddb, stubber = dynamodb
    # Given the expected conditional update of a forced refresh
    stubber.add_response(
        "update_item",
        {},
        {
            "TableName": "tokens",
            "Key": {"pk": {"S": KEY}},
            "UpdateExpression": "SET lease_owner = :owner, lease_until = :until, "
            "expires_at = if_not_exists(expires_at, :state_ttl), forced_at = :now",
            "ConditionExpression": "(attribute_not_exists(lease_until) OR lease_until <= :now) "
            "AND fp = :seen AND (attribute_not_exists(forced_at) OR forced_at <= :floor)",
            "ExpressionAttributeValues": {
                ":now": {"N": "100"},
                ":owner": {"S": "env-a"},
                ":until": {"N": "115"},
                ":state_ttl": {"N": "86500"},
                ":seen": {"S": "fp-1"},
                ":floor": {"N": "70"},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    )
    # When the lease is asked for
    taken, current = plain_table(ddb).try_acquire_lease(
        KEY, owner="env-a", now=100, lease_until=115, seen_fingerprint="fp-1", forced_floor=70
    )
    # Then it is taken with exactly that write
    assert (taken, current) == (True, None)


def test_a_lost_race_returns_the_item_that_won(dynamodb: tuple[Any, Stubber]) -> None:
    ddb, stubber = dynamodb
    # Given the conditional check fails, with the current item in the error (ALL_OLD)
    stubber.add_client_error(
        "update_item",
        service_error_code="ConditionalCheckFailedException",
        response_meta={},
        modeled_fields={"Item": {"pk": {"S": KEY}, "lease_owner": {"S": "env-b"}}},
    )
    # When the lease is asked for
    taken, current = plain_table(ddb).try_acquire_lease(
        KEY, owner="env-a", now=100, lease_until=115, seen_fingerprint=None
    )
    # Then it is not taken, and the winner's item comes back without a second read
    assert taken is False
    assert current is not None
    assert current.lease_owner == "env-b"


def test_commit_keeps_the_replaced_fingerprints_and_frees_the_lease(
    dynamodb: tuple[Any, Stubber],
) -> None:
    ddb, stubber = dynamodb
    # Given the write a commit must make: the token (plain here: no key), the fingerprints it
    # replaces, and the lease, backoff and remembered failures removed; only by the holder
    stubber.add_response(
        "update_item",
        {},
        {
            "TableName": "tokens",
            "Key": {"pk": {"S": KEY}},
            "UpdateExpression": "SET tok = :tok, enc = :enc, fp = :fp, token_type = :type, "
            "issued_at = :issued, expires_at = :exp, updated_at = :now, prev_fps = :recent, "
            "secret_version = :version REMOVE lease_owner, lease_until, backoff_until, "
            "failures, failure_code, auth_failed_until, auth_failed_version",
            "ConditionExpression": "lease_owner = :owner",
            "ExpressionAttributeValues": {
                ":owner": {"S": "env-a"},
                ":tok": {"B": b"tok-1"},
                ":enc": {"S": PLAIN},
                ":fp": {"S": TOKEN.fingerprint},
                ":type": {"S": "Bearer"},
                ":issued": {"N": "1800000000"},
                ":exp": {"N": "1800003600"},
                ":now": {"N": "5"},
                ":recent": {"L": [{"S": "x"}, {"S": "y"}]},
                ":version": {"S": "v1"},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    )
    # When the holder commits
    committed, current = plain_table(ddb).commit(
        KEY, owner="env-a", token=TOKEN, now=5, recent=("x", "y")
    )
    # Then that is the write, and it went through
    assert (committed, current) == (True, None)


def test_a_failed_write_other_than_the_condition_is_store_unavailable(
    dynamodb: tuple[Any, Stubber],
) -> None:
    ddb, stubber = dynamodb
    stubber.add_client_error("update_item", service_error_code="ThrottlingException")
    with pytest.raises(StoreUnavailable, match="ThrottlingException"):
        plain_table(ddb).release(KEY, owner="env-a")


# ---------------------------------------------------------------------------- TokenCipher


def test_a_token_is_encrypted_bound_to_its_cache_key() -> None:
    kms = client("kms")
    with Stubber(kms) as stubber:
        stubber.add_response(
            "encrypt",
            {"CiphertextBlob": b"sealed", "KeyId": "k"},
            {"KeyId": "k", "Plaintext": b"tok-1", "EncryptionContext": {"cache_key": KEY}},
        )
        stubber.add_response(
            "decrypt",
            {"Plaintext": b"tok-1", "KeyId": "k"},
            {"CiphertextBlob": b"sealed", "EncryptionContext": {"cache_key": KEY}, "KeyId": "k"},
        )
        cipher = TokenCipher(kms, "k")
        blob, scheme = cipher.encrypt("tok-1", KEY)
        assert (blob, scheme) == (b"sealed", KMS)
        assert cipher.decrypt(blob, scheme, KEY) == "tok-1"


# ---------------------------------------------------------------------------- SecretStore


def secret_answer(version: str) -> dict[str, Any]:
    return {
        "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:igni-AbCdEf",
        "Name": "igni",
        "VersionId": version * 32,
        "SecretString": '{"client_id": "id", "client_secret": "s3cr3t", "workspace": "acme"}',
        "VersionStages": ["AWSCURRENT"],
    }


def test_the_secret_is_cached_for_its_time_and_forced_reads_bypass_it() -> None:
    sm = client("secretsmanager")
    now = [0.0]
    with Stubber(sm) as stubber:
        expected = {"SecretId": "igni", "VersionStage": "AWSCURRENT"}
        stubber.add_response("get_secret_value", secret_answer("a"), expected)
        stubber.add_response("get_secret_value", secret_answer("b"), expected)
        stubber.add_response("get_secret_value", secret_answer("c"), expected)
        store = SecretStore(sm, cache_seconds=30.0, clock=lambda: now[0])
        # Given one read
        assert store.current("igni").version_id == "a" * 32
        # When asked again within 30 s, the cache answers; a forced read goes to AWS
        now[0] = 29.0
        assert store.current("igni").version_id == "a" * 32
        assert store.current("igni", force=True).version_id == "b" * 32
        # And after 30 s the cache is read again
        now[0] = 60.0
        assert store.current("igni").version_id == "c" * 32
        assert store.cached("igni") is not None
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("AccessDeniedException", ConfigurationError),
        ("ResourceNotFoundException", ConfigurationError),
        ("DecryptionFailure", ConfigurationError),
        ("ThrottlingException", SecretUnavailable),
        ("InternalServiceError", SecretUnavailable),
    ],
)
def test_secrets_manager_failures_are_configuration_errors_or_unavailable(
    code: str, error: type[Exception]
) -> None:
    sm = client("secretsmanager")
    with Stubber(sm) as stubber:
        stubber.add_client_error("get_secret_value", service_error_code=code)
        with pytest.raises(error) as raised:
            SecretStore(sm, cache_seconds=30.0).current("arn:aws:secretsmanager:x:1:secret:igni")
        # The secret's name or ARN never reaches the message (only the log line's detail)
        assert "arn:" not in str(raised.value)
