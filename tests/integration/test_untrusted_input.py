"""Input nobody should trust, end to end (issue 10, holes 1, 6 and 7).

- A token URL that two parsers read differently sends nothing anywhere: not to the host
  ``urllib.parse`` sees, not to the one urllib3 would connect to (a decoy listener here).
- Text that is not valid Unicode (a lone surrogate, raw or as a JSON ``\\ud800`` escape) is a
  400 ``invalid_request`` wherever it sits in the request, never a 500.
- Igni's ``expires_in`` is believed only from 1 s to 10 years; anything else is a 502
  ``upstream_bad_response``, and a JWT ``exp`` still shortens what is believed.

The handler and the rotation function run against the session's moto server and Igni stub.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from local.events import load_event
from local.lambda_context import FakeLambdaContext
from local.stack import LocalStack
from tests.integration.conftest import Rotation
from token_vendor.functions import api as handler
from token_vendor.functions.rotation import RotationError
from token_vendor.functions.runtime import reset_runtime

STUB_CLIENT_SECRET = "test-secret-0123456789"
# The longest lifetime believed from Igni: 10 years of 365 days (config.MAX_EXPIRES_IN).
TEN_YEARS = 315_360_000


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return handler.lambda_handler(event, FakeLambdaContext(timeout_s=10.0))


def error_of(response: dict[str, Any], status: int, code: str) -> str:
    """Assert a JSON error answer of the contract; returns its message."""
    assert response["statusCode"] == status, response
    body = json.loads(response["body"])
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    message: str = body["message"]
    assert message
    return message


class Decoy:
    """A plain TCP listener on 127.0.0.2 that records every connection and what it received."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.2", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    listener = Decoy()
    try:
        yield listener
    finally:
        listener.close()


def split_url(decoy: Decoy, igni_stub: Any) -> str:
    """urllib.parse reads host 127.0.0.1 (the stub); urllib3 reads 127.0.0.2 (the decoy)."""
    return f"http://127.0.0.2:{decoy.port}\\@127.0.0.1:{igni_stub.port}/api/v1/oauth2/token"


def assert_nothing_sent(decoy: Decoy, igni_stub: Any) -> None:
    assert igni_stub.calls() == []
    assert decoy.received == []


# ------------------------------------------------------------ hole 1: one URL parser


def test_a_backslash_token_url_is_500_configuration_error_and_sends_nothing(
    stack: LocalStack, igni_stub: Any, decoy: Decoy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given IGNI_TOKEN_URL that urllib.parse reads as the stub and urllib3 as the decoy
    monkeypatch.setenv("IGNI_TOKEN_URL", split_url(decoy, igni_stub))
    reset_runtime()
    # When a token is asked for
    message = error_of(invoke(load_event("get_token")), 500, "configuration_error")
    # Then the configuration is refused, saying why, and neither host got a byte
    assert "backslash" in message
    assert STUB_CLIENT_SECRET not in message
    assert_nothing_sent(decoy, igni_stub)


def test_a_profile_token_url_with_a_backslash_is_refused_too(
    stack: LocalStack, igni_stub: Any, decoy: Decoy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a profile whose token_url is read differently by the two parsers
    monkeypatch.setenv(
        "IGNI_PROFILES",
        json.dumps(
            {
                "analytics": {
                    "secret_id": stack.secret_name,
                    "token_url": split_url(decoy, igni_stub),
                }
            }
        ),
    )
    reset_runtime()
    resource = "/token/{profile}"
    event = load_event(
        "get_token",
        path="/token/analytics",
        resource=resource,
        pathParameters={"profile": "analytics"},
        requestContext__resourcePath=resource,
    )
    # When that profile's token is asked for
    message = error_of(invoke(event), 500, "configuration_error")
    # Then it is refused, naming the profile, and nothing was sent
    assert "profile 'analytics': token URL must not contain a backslash" in message
    assert_nothing_sent(decoy, igni_stub)


@pytest.mark.parametrize("userinfo", ["user:pass@", "@"])
def test_a_token_url_with_userinfo_is_refused(
    stack: LocalStack, igni_stub: Any, monkeypatch: pytest.MonkeyPatch, userinfo: str
) -> None:
    monkeypatch.setenv("IGNI_TOKEN_URL", igni_stub.token_url.replace("://", f"://{userinfo}"))
    reset_runtime()
    error_of(invoke(load_event("get_token")), 500, "configuration_error")
    assert igni_stub.calls() == []


def test_rotation_test_secret_refuses_a_backslash_token_url_and_sends_nothing(
    stack: LocalStack,
    igni_stub: Any,
    decoy: Decoy,
    rotation: Rotation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a staged key and the rotation function configured with the split URL
    rotation.enable()
    staged = rotation.stage(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    monkeypatch.setenv("IGNI_TOKEN_URL", split_url(decoy, igni_stub))
    # When testSecret runs
    with pytest.raises(RotationError, match="backslash") as failure:
        rotation.step("testSecret", staged)
    # Then it fails without sending the staged key anywhere
    assert igni_stub.client_secret not in str(failure.value)
    assert_nothing_sent(decoy, igni_stub)


# ------------------------------------------------------ hole 6: text that is not Unicode


SURROGATE = "\ud800"
ESCAPED = '{"rejected_token": "\\ud800"}'  # the body text holds backslash-u-d800


def refresh_event(body: str, *, flagged: bool = False) -> dict[str, Any]:
    return load_event("post_refresh", body=body, isBase64Encoded=flagged)


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("json escape of a lone surrogate", refresh_event(ESCAPED)),
        ("escape with padding", refresh_event('{"rejected_token": " \\udfff x "}')),
        ("escape in another key", refresh_event('{"rejected_token": "t", "\\udc80": 1}')),
        ("escape in a nested value", refresh_event('{"rejected_token": "t", "x": ["\\ud83d"]}')),
        (
            "base64 of the escape",
            refresh_event(base64.b64encode(ESCAPED.encode()).decode(), flagged=True),
        ),
        (
            "base64 of UTF-8 that encodes a surrogate",
            refresh_event(
                base64.b64encode(b'{"rejected_token": "\xed\xa0\x80"}').decode(), flagged=True
            ),
        ),
        ("raw surrogate in the body", refresh_event('{"rejected_token": "' + SURROGATE + '"}')),
        (
            "surrogate in min_ttl",
            load_event("get_token", queryStringParameters={"min_ttl": "\udc00"}),
        ),
        (
            "surrogate in another query parameter",
            load_event("get_token", queryStringParameters={"x": SURROGATE}),
        ),
        ("surrogate in a header", load_event("get_token", headers={"X-Custom": "a" + SURROGATE})),
        ("surrogate in a header name", load_event("get_token", headers={SURROGATE: "a"})),
        (
            "surrogate in the profile",
            load_event(
                "get_token",
                path="/token/" + SURROGATE,
                resource="/token/{profile}",
                pathParameters={"profile": SURROGATE},
            ),
        ),
        (
            "surrogate in the caller",
            load_event("get_token", requestContext__identity__userArn="arn:" + SURROGATE),
        ),
        ("surrogate in the body of a GET", load_event("get_token", body=SURROGATE)),
    ],
)
def test_text_that_is_not_unicode_is_400_invalid_request(
    stack: LocalStack, igni_stub: Any, name: str, event: dict[str, Any]
) -> None:
    # Given a request carrying a lone surrogate (raw, or decoded from a JSON escape)
    # When the handler gets it
    response = invoke(event)
    # Then it is a JSON 400 invalid_request, never a 500, and Igni was not asked
    error_of(response, 400, "invalid_request")
    json.dumps(response).encode("utf-8")  # the answer itself is valid Unicode
    assert igni_stub.calls() == []


def test_a_refresh_with_a_surrogate_escape_leaves_the_token_vended(
    stack: LocalStack, igni_stub: Any
) -> None:
    # Given a token already vended
    first = json.loads(invoke(load_event("get_token"))["body"])["access_token"]
    # When a caller reports the token "\ud800"
    error_of(invoke(refresh_event(ESCAPED)), 400, "invalid_request")
    # Then the token is still the one vended, and Igni was asked once in all
    assert json.loads(invoke(load_event("get_token"))["body"])["access_token"] == first
    assert len(igni_stub.calls()) == 1


# --------------------------------------------------------- hole 7: the upstream lifetime


@pytest.mark.parametrize("lifetime", [10**400, 10**40, TEN_YEARS + 1, 0, -1])
def test_a_lifetime_outside_one_second_to_ten_years_is_502_upstream_bad_response(
    stack: LocalStack, igni_stub: Any, lifetime: int
) -> None:
    # Given Igni announcing this expires_in (and a JWT exp that far ahead)
    igni_stub.configure(lifetime=lifetime)
    # When a token is asked for
    message = error_of(invoke(load_event("get_token")), 502, "upstream_bad_response")
    # Then it is a bad answer (never a 500, never a 40-digit lifetime vended)
    assert "expires_in" in message


def test_a_ten_year_lifetime_is_vended(stack: LocalStack, igni_stub: Any) -> None:
    # Given Igni announcing exactly 10 years
    igni_stub.configure(lifetime=TEN_YEARS)
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then it is vended with (about) that lifetime
    assert response["statusCode"] == 200, response
    assert TEN_YEARS - 5 <= json.loads(response["body"])["expires_in"] <= TEN_YEARS


def test_a_jwt_exp_still_shortens_a_ten_year_lifetime(stack: LocalStack, igni_stub: Any) -> None:
    # Given expires_in says 10 years but the JWT's exp is 2 h after issue
    igni_stub.configure(lifetime=TEN_YEARS, exp_offset=-(TEN_YEARS - 7200))
    # When a token is asked for
    response = invoke(load_event("get_token"))
    # Then the earlier exp counts
    assert response["statusCode"] == 200, response
    assert 7190 <= json.loads(response["body"])["expires_in"] <= 7200


def test_rotation_test_secret_refuses_an_unbounded_lifetime(
    stack: LocalStack, igni_stub: Any, rotation: Rotation
) -> None:
    # Given a staged key and Igni announcing a 400-digit lifetime
    rotation.enable()
    staged = rotation.stage(
        {"client_id": igni_stub.client_id, "client_secret": igni_stub.client_secret}
    )
    igni_stub.configure(lifetime=10**400)
    # When testSecret runs, then it fails as a bad answer (not an OverflowError)
    with pytest.raises(RotationError, match="upstream_bad_response"):
        rotation.step("testSecret", staged)
