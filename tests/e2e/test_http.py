"""Every path, header and error code of the token API, over HTTP, signed with botocore's SigV4.

A black box (see conftest.py): the deployed API or `make local`, the same assertions. Answers of
the declared paths are checked against openapi.yaml too. The table in README.md ("The API",
"Errors") lists what is exercised here; 500 configuration_error and internal_error need a broken
deployment and are covered by the integration tests instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from local.igni_stub import StubControl
from tests.e2e.conftest import BAD_PROFILE, DOWN_PROFILE, Target
from tests.openapi_check import assert_matches_openapi

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=35.0), retries=False)
UNKNOWN_PROFILE = "e2e-nobody"
MISSING_TOKEN = {"message": "Missing Authentication Token"}
TIERS = {"memory", "dynamodb", "upstream"}
NOT_CURRENT = "e2e-a-token-that-is-not-the-current-one"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: Any


def call(
    target: Target,
    method: str,
    path: str,
    *,
    template: str | None = None,
    body: bytes | None = None,
    credentials: Credentials | None = None,
    unsigned: bool = False,
    signed_at: datetime | None = None,
) -> Answer:
    """One request, signed as a caller of the API would sign it unless ``unsigned``.

    ``template``: the openapi.yaml path the answer must match (None for undeclared paths).
    """
    url = target.url(path)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
    if not unsigned:
        signer = SigV4Auth(credentials or target.credentials, "execute-api", target.region)
        if signed_at is None:
            signer.add_auth(request)
        else:
            clock = signed_at.astimezone(UTC).replace(tzinfo=None)
            with mock.patch("botocore.auth.get_current_datetime", return_value=clock):
                signer.add_auth(request)
    response = HTTP.request(method, url, body=body, headers=dict(request.headers.items()))
    pairs = [(str(k), str(v)) for k, v in response.headers.items()]
    parsed = json.loads(response.data) if response.data else None
    if template is not None:
        assert_matches_openapi(method, template, response.status, pairs, parsed)
    answer = Answer(response.status, {k.lower(): v for k, v in pairs}, parsed)
    # API Gateway names every answer, its own refusals included: what a caller reports.
    assert answer.headers.get("x-amzn-requestid"), answer
    return answer


def refresh_body(token: str) -> bytes:
    return json.dumps({"rejected_token": token}).encode()


def assert_token(answer: Answer) -> dict[str, Any]:
    """A 200 token answer with every header the README promises."""
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["pragma"] == "no-cache"
    assert answer.headers["x-token-cache"] in TIERS
    body: dict[str, Any] = answer.body
    assert set(body) == {"access_token", "token_type", "expires_in", "expires_at"}
    assert body["token_type"] == "Bearer"
    assert body["access_token"]
    assert body["expires_in"] > 0
    return body


def assert_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    """The function's JSON error: status, code, a message, and no-store."""
    assert answer.status == status, answer
    assert answer.body["error"] == code, answer
    assert answer.body["message"]
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.body
    return body


# --------------------------------------------------------------------------------- tokens


def test_get_token_answers_a_token_with_the_contract_headers(target: Target) -> None:
    # When GET /token is called twice
    first = assert_token(call(target, "GET", "/token", template="/token"))
    second = call(target, "GET", "/token", template="/token")

    # Then both are tokens, the second from a cache (this environment's or the table)
    assert_token(second)
    assert second.headers["x-token-cache"] in {"memory", "dynamodb"}
    if target.local:
        # One execution environment: the same token (a deployed fleet's other environments
        # may hold the previous one in memory for up to 30 s after a forced refresh)
        assert second.body["access_token"] == first["access_token"]


def test_min_ttl_is_honoured(target: Target) -> None:
    # When a caller asks for a token valid at least 60 s
    answer = call(target, "GET", "/token?min_ttl=60", template="/token")

    # Then it gets one
    assert assert_token(answer)["expires_in"] >= 60


@pytest.fixture(scope="module")
def cached(target: Target) -> dict[str, Any]:
    """A token in the cache, so that min_ttl is judged against its lifetime."""
    return assert_token(call(target, "GET", "/token", template="/token"))


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "1.5", "", "1e3", "9999999999", "999999999"],
    ids=["word", "negative", "fraction", "empty", "exponent", "ten-digits", "beyond-any-token"],
)
def test_a_bad_min_ttl_is_400(target: Target, cached: dict[str, Any], value: str) -> None:
    # When min_ttl is not a whole number of seconds a fresh token could give
    answer = call(target, "GET", f"/token?min_ttl={value}", template="/token")

    # Then it is 400 invalid_request
    assert_error(answer, 400, "invalid_request")


def test_a_named_profile_has_its_own_token(target: Target, named_profile: str) -> None:
    default = assert_token(call(target, "GET", "/token", template="/token"))
    path = f"/token/{named_profile}"
    answer = call(target, "GET", path, template="/token/{profile}")
    assert assert_token(answer)["access_token"] != default["access_token"]
    again = call(target, "GET", path + "?min_ttl=30", template="/token/{profile}")
    assert assert_token(again)["expires_in"] >= 30


def test_an_unknown_profile_is_404(target: Target) -> None:
    get = call(target, "GET", f"/token/{UNKNOWN_PROFILE}", template="/token/{profile}")
    refresh = call(
        target,
        "POST",
        f"/token/{UNKNOWN_PROFILE}/refresh",
        template="/token/{profile}/refresh",
        body=refresh_body(NOT_CURRENT),
    )
    assert UNKNOWN_PROFILE in assert_error(get, 404, "unknown_profile")["message"]
    assert_error(refresh, 404, "unknown_profile")


# -------------------------------------------------------------------------------- refresh


def test_a_refresh_reporting_a_token_never_vended_is_409_without_a_token(
    target: Target,
) -> None:
    # Given the current token
    current = assert_token(call(target, "GET", "/token", template="/token"))

    # When a caller reports a token this service never vended (a refresh grant used as a read)
    answer = call(
        target,
        "POST",
        "/token/refresh",
        template="/token/refresh",
        body=refresh_body(NOT_CURRENT),
    )

    # Then it is refused 409 unknown_token, and the answer holds no token
    assert answer.status == 409, answer
    assert answer.body["error"] == "unknown_token"
    assert "access_token" not in answer.body
    assert current["access_token"] not in json.dumps(answer.body)


def test_the_profile_refresh_path(target: Target, named_profile: str) -> None:
    path = f"/token/{named_profile}"
    current = assert_token(call(target, "GET", path, template="/token/{profile}"))
    answer = call(
        target,
        "POST",
        path + "/refresh",
        template="/token/{profile}/refresh",
        body=refresh_body(NOT_CURRENT),
    )
    assert answer.status == 409, answer
    assert answer.body["error"] == "unknown_token"
    assert current["access_token"] not in json.dumps(answer.body)


def test_a_forced_refresh_replaces_the_token_once_then_is_rate_limited(target: Target) -> None:
    # Given the current token
    current = assert_token(call(target, "GET", "/token", template="/token"))

    # When a caller reports it as refused by Igni
    forced = call(
        target,
        "POST",
        "/token/refresh",
        template="/token/refresh",
        body=refresh_body(current["access_token"]),
    )

    # Then it is replaced (unless a run less than 30 s ago forced one: then it is already 429)
    if forced.status == 200:
        replacement = assert_token(forced)
        assert replacement["access_token"] != current["access_token"]
        if target.local:
            # Exchanged now; and served everywhere at once (a deployed fleet's other
            # environments revalidate their memory within 30 s)
            assert forced.headers["x-token-cache"] == "upstream"
            after = assert_token(call(target, "GET", "/token", template="/token"))
            assert after["access_token"] == replacement["access_token"]
        # and reporting the replacement at once is refused: Igni is not asked again so soon
        forced = call(
            target,
            "POST",
            "/token/refresh",
            template="/token/refresh",
            body=refresh_body(replacement["access_token"]),
        )
    assert_error(forced, 429, "refresh_rate_limited")
    assert 1 <= int(forced.headers["retry-after"]) <= 30


BAD_BODIES = {
    "empty": b"",
    "text": b"not json",
    "array": b"[]",
    "string": b'"rejected_token"',
    "no-field": b"{}",
    "empty-token": b'{"rejected_token": ""}',
    "blank": b'{"rejected_token": "   "}',
    "number": b'{"rejected_token": 42}',
    "other": b'{"token": "abc"}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_refresh_body_is_400(target: Target, body: bytes) -> None:
    answer = call(target, "POST", "/token/refresh", template="/token/refresh", body=body)
    assert_error(answer, 400, "invalid_request")


@pytest.mark.parametrize("name", ["empty", "text", "empty-token"])
def test_a_bad_profile_refresh_body_is_400(target: Target, name: str) -> None:
    # The body is judged before the profile: the same 400 for any profile name
    path = f"/token/{UNKNOWN_PROFILE}/refresh"
    answer = call(target, "POST", path, template="/token/{profile}/refresh", body=BAD_BODIES[name])
    assert_error(answer, 400, "invalid_request")


# ------------------------------------------------------------------------ API Gateway 403s


def test_an_unsigned_request_is_403_missing_authentication_token(target: Target) -> None:
    get = call(target, "GET", "/token", template="/token", unsigned=True)
    post = call(
        target,
        "POST",
        "/token/refresh",
        template="/token/refresh",
        unsigned=True,
        body=refresh_body(NOT_CURRENT),
    )
    for answer in (get, post):
        assert answer.status == 403
        assert answer.body == MISSING_TOKEN
        assert "cache-control" not in answer.headers  # API Gateway's answer, not the function's


def test_a_wrong_signature_is_403(target: Target) -> None:
    wrong_secret = Credentials(
        target.credentials.access_key, "not-the-secret-key", target.credentials.token
    )
    answer = call(target, "GET", "/token", template="/token", credentials=wrong_secret)
    assert answer.status == 403
    assert answer.body["message"].startswith(
        "The request signature we calculated does not match the signature you provided."
    )


def test_an_unknown_access_key_is_403(target: Target) -> None:
    unknown = Credentials("AKIAE2EUNKNOWNKEY000", "not-a-secret-key")
    answer = call(target, "GET", "/token", template="/token", credentials=unknown)
    assert answer.status == 403
    assert answer.body == {"message": "The security token included in the request is invalid."}


def test_a_stale_signature_is_403(target: Target) -> None:
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    answer = call(target, "GET", "/token", template="/token", signed_at=ten_minutes_ago)
    assert answer.status == 403
    assert answer.body["message"].startswith("Signature expired: ")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/token/a/b"),
        ("GET", "/token/x/refresh"),
        ("POST", "/token"),
        ("DELETE", "/token"),
        ("PUT", "/token/refresh"),
    ],
)
def test_an_undeclared_path_or_method_is_403_even_signed(
    target: Target, method: str, path: str
) -> None:
    # API Gateway answers these itself: the function never sees them
    body = refresh_body(NOT_CURRENT) if method in ("POST", "PUT") else None
    answer = call(target, method, path, body=body)
    assert answer.status == 403
    assert answer.body == MISSING_TOKEN


# ----------------------------------------------------------------- Igni failing (stub only)


def test_igni_down_is_503_with_retry_after(target: Target, stub: StubControl) -> None:
    # Given Igni answering 503 to every attempt, and a profile with no token cached
    stub.configure(faults=[{"status": 503}] * 10)

    # When a caller asks for that profile's token
    answer = call(target, "GET", f"/token/{DOWN_PROFILE}", template="/token/{profile}")

    # Then it is 503 upstream_unavailable, with when to try again
    assert_error(answer, 503, "upstream_unavailable")
    assert int(answer.headers["retry-after"]) >= 1


def test_igni_answering_garbage_is_502(target: Target, stub: StubControl) -> None:
    # Given Igni answering 200 with a body that is not JSON, and a profile with no token cached
    stub.configure(faults=[{"garbage": True}] * 10)

    # When a caller asks for that profile's token
    answer = call(target, "GET", f"/token/{BAD_PROFILE}", template="/token/{profile}")

    # Then it is 502 upstream_bad_response
    assert_error(answer, 502, "upstream_bad_response")
