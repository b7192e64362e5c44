"""What Igni's answers mean, at their edges: the token and its size limits, `Retry-After` as
delay-seconds and as an HTTP-date, the whole seconds told to callers, the retry backoff's
cap, exponent and jitter (on an injected clock), and the rejection and error fields. Each test
pins a boundary a one-character change to igni.py would move (make mutate)."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import urllib3

from tests.fakes import Clock
from token_vendor.errors import UpstreamAuthFailed, UpstreamBadResponse, UpstreamUnavailable
from token_vendor.igni.answers import (
    MAX_BODY_BYTES,
    MAX_TOKEN_BYTES,
    MAX_UPSTREAM_TEXT,
    IssuedToken,
    _error_fields,
    basic_challenge,
    parse_token,
    rejection,
    retry_after_seconds,
    sanitize,
)
from token_vendor.igni.client import IgniClient, _ceil

NOW = 1_800_000_000.0
CAP = 60.0
TOKEN_URL = "https://acme.igni.co/api/v1/oauth2/token"


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


# ---------------------------------------------------------------------------- the token


def test_a_token_answer_is_the_token_the_bearer_type_and_the_lifetime() -> None:
    # Given / When / Then
    assert parse_token(body(access_token="tok", token_type="bearer", expires_in=60)) == (
        IssuedToken(access_token="tok", token_type="Bearer", expires_in=60)
    )


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_type_is_recognised_in_any_case_and_is_the_default(token_type: str) -> None:
    # Given / When / Then a Bearer token of any spelling, or none named, is a Bearer token
    assert parse_token(body(access_token="t", token_type=token_type)).token_type == "Bearer"
    assert parse_token(body(access_token="t")).token_type == "Bearer"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<html>", "Igni answered 2xx with a body that is not JSON"),
        (b"[1]", "Igni answered 2xx with JSON that is not an object"),
        (body(expires_in=60), "Igni answered 2xx without an access_token"),
        (body(access_token=5), "Igni answered 2xx without an access_token"),
        (body(access_token=" \t "), "Igni answered 2xx without an access_token"),
        (
            body(access_token="t\u00e9k"),
            "Igni answered 2xx with an access_token that is not printable ASCII (RFC 6749 A.12)",
        ),
        (
            body(access_token="tok", token_type="Bearer\r\n"),
            "Igni answered 2xx with a token_type that is not printable ASCII (RFC 6749 A.12)",
        ),
        (
            body(access_token="tok", token_type=7),
            "Igni answered 2xx with a token_type that is not printable ASCII (RFC 6749 A.12)",
        ),
        (
            body(access_token="tok", token_type="mac"),
            "Igni answered 2xx with a token_type other than Bearer",
        ),
    ],
)
def test_an_unusable_token_answer_is_a_bad_response_that_says_why(
    payload: bytes, message: str
) -> None:
    # Given / When / Then
    with pytest.raises(UpstreamBadResponse) as raised:
        parse_token(payload)
    assert raised.value.message == message


def test_a_token_of_64_kib_is_accepted_and_one_byte_more_is_refused_with_its_size() -> None:
    # Given tokens of exactly MAX_TOKEN_BYTES (64 KiB) and one byte more
    assert MAX_TOKEN_BYTES == 65536
    largest = "x" * MAX_TOKEN_BYTES
    # When / Then the first is taken, the second refused with a message giving its size
    assert parse_token(body(access_token=largest)).access_token == largest
    with pytest.raises(UpstreamBadResponse) as raised:
        parse_token(body(access_token=largest + "x"))
    assert raised.value.message == (
        "Igni issued a token of 65537 bytes; at most 65536 bytes are cached and vended"
    )


def test_a_body_of_the_largest_size_is_read_and_one_byte_more_is_refused() -> None:
    # Given a valid answer padded with whitespace to exactly MAX_BODY_BYTES, and one byte more
    assert MAX_BODY_BYTES == 80 * 1024
    answer = body(access_token="tok")
    largest = answer + b" " * (MAX_BODY_BYTES - len(answer))
    # When / Then the first is a token, the second an oversized body
    assert parse_token(largest).access_token == "tok"
    with pytest.raises(UpstreamBadResponse) as raised:
        parse_token(largest + b" ")
    assert raised.value.message == "Igni answered with an oversized body"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "Igni answered 2xx with an expires_in that is not a number"),
        ([60], "Igni answered 2xx with an expires_in that is not a number"),
        (float("nan"), "Igni answered 2xx with an infinite or NaN expires_in"),
        ("1e3", "Igni answered 2xx with an expires_in string that is not up to 20 digits 0-9"),
        (0, "Igni answered 2xx with an expires_in outside 1..315360000 seconds"),
    ],
)
def test_an_unusable_lifetime_is_a_bad_response_that_says_why(value: object, message: str) -> None:
    # Given / When / Then
    with pytest.raises(UpstreamBadResponse) as raised:
        parse_token(json.dumps({"access_token": "t", "expires_in": value}).encode())
    assert raised.value.message == message


# ------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 7\t", 7.0),
        ("59", 59.0),
        ("60", 60.0),
        ("61", CAP),
        ("0000000005", 5.0),
        ("00000000005", CAP),
        ("9" * 400, CAP),
    ],
)
def test_delay_seconds_are_read_and_capped(value: str, seconds: float) -> None:
    # Given a Retry-After of ASCII digits (surrounding spaces and tabs allowed)
    # When / Then it is that many seconds, at most the cap; more than ten digits is the cap
    assert retry_after_seconds(value, now=NOW, cap=CAP) == seconds


@pytest.mark.parametrize(
    "value", [None, "", "\u00b2", "-5", "5.5", "soon", "\n7", "7 s", "7X", "X7"]
)
def test_anything_else_than_digits_or_a_date_is_ignored(value: str | None) -> None:
    # Given / When / Then (the fleet's own backoff applies)
    assert retry_after_seconds(value, now=NOW, cap=CAP) is None


def test_an_http_date_is_the_seconds_until_it() -> None:
    # Given an HTTP-date 30 s from now (RFC 9110 10.2.3)
    # When / Then it means 30 s
    assert retry_after_seconds(http_date(30), now=NOW, cap=CAP) == 30.0


def test_an_http_date_past_the_cap_is_the_cap() -> None:
    # Given dates an hour ahead, and in the year 9999
    # When / Then both are the cap, never ten years
    assert retry_after_seconds(http_date(3600), now=NOW, cap=CAP) == CAP
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW, cap=CAP) == CAP


def test_an_http_date_in_the_past_means_now() -> None:
    # Given a date 30 s ago
    # When / Then the delay is 0 s, never negative
    assert retry_after_seconds(http_date(-30), now=NOW, cap=CAP) == 0.0


def test_an_http_date_without_a_zone_is_read_as_utc_whatever_the_machines_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a machine in Tokyo's time zone, and a date 30 s ahead written without its zone
    # ("-0000": unknown zone)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        value = http_date(30).replace("GMT", "-0000")
        # When / Then it is taken as UTC
        assert retry_after_seconds(value, now=NOW, cap=CAP) == 30.0
        assert retry_after_seconds(http_date(30), now=NOW, cap=CAP) == 30.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_http_date_of_64_characters_is_read_and_one_more_is_not() -> None:
    # Given the same date padded inside to exactly 64 characters, and to 65
    date = http_date(30)
    at_64 = date.replace(", ", "," + " " * (64 - len(date) + 1), 1)
    at_65 = date.replace(", ", "," + " " * (65 - len(date) + 1), 1)
    assert (len(at_64), len(at_65)) == (64, 65)
    # When / Then only the first is believed (longer text is not parsed at all)
    assert retry_after_seconds(at_64, now=NOW, cap=CAP) == 30.0
    assert retry_after_seconds(at_65, now=NOW, cap=CAP) is None


@pytest.mark.parametrize("value", ["Sun, 06 Dec 2026 99:99:99 GMT", "Mon, 45 Foo 2026 x"])
def test_an_impossible_date_is_ignored(value: str) -> None:
    # Given / When / Then
    assert retry_after_seconds(value, now=NOW, cap=CAP) is None


@pytest.mark.parametrize(
    ("seconds", "told"), [(None, None), (0.0, 1), (0.2, 1), (1.0, 1), (1.2, 2), (30.0, 30)]
)
def test_callers_are_told_whole_seconds_never_less_than_one(
    seconds: float | None, told: int | None
) -> None:
    # Given / When / Then a delay is rounded up, and at least 1 s
    assert _ceil(seconds) == told


# -------------------------------------------------------------------------- the backoff


class Always503:
    """A PoolManager whose every answer is 503, with this Retry-After (if any)."""

    def __init__(self, retry_after: str | None = None) -> None:
        self.retry_after = retry_after

    def request(self, method: str, url: str, **_: Any) -> urllib3.HTTPResponse:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        return urllib3.HTTPResponse(
            body=io.BytesIO(b"busy"), headers=headers, status=503, preload_content=False
        )


def sleeps_of(jitter: float, *, attempts: int = 6, retry_after: str | None = None) -> list[float]:
    clock = Clock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    client = IgniClient(
        Always503(retry_after),  # type: ignore[arg-type]
        max_attempts=attempts,
        backoff_base=0.25,
        backoff_max=2.0,
        retry_after_max=CAP,
        clock=clock.mono,
        wall=clock.wall,
        sleep=sleep,
        jitter=lambda: jitter,
    )
    with pytest.raises(UpstreamUnavailable):
        client.exchange(TOKEN_URL, "id", "secret", deadline=1000.0)
    return sleeps


def test_retries_back_off_exponentially_from_the_base_up_to_the_cap() -> None:
    # Given Igni answering 503 six times, and the largest jitter
    # When the client retries
    # Then it waits 0.25 s, doubling each time, never more than 2 s
    assert sleeps_of(1.0) == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_the_backoff_is_fully_jittered() -> None:
    # Given a jitter of one half, and of zero
    # When / Then each wait is that fraction of the capped backoff
    assert sleeps_of(0.5) == [0.125, 0.25, 0.5, 1.0, 1.0]
    assert sleeps_of(0.0) == [0.0] * 5


def test_a_servers_retry_after_is_the_least_wait() -> None:
    # Given Igni asking for 1 s between attempts
    # When / Then the client waits at least that, or its own backoff when longer
    assert sleeps_of(1.0, retry_after="1") == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert sleeps_of(0.0, retry_after="0") == [0.0] * 5


# ------------------------------------------------------------- rejections and errors


def test_a_401_is_an_auth_failure_with_igni_s_words_kept_for_the_log() -> None:
    # Given Igni answering 401 with a description
    error = rejection(401, body(error="invalid_client", error_description="bad secret"))
    # When / Then it is an auth failure that says to check the secret; the text is the detail
    assert isinstance(error, UpstreamAuthFailed)
    assert error.kind == "auth"
    assert error.message == (
        "Igni rejected the client credentials (invalid_client): check client_id and "
        "client_secret in the secret"
    )
    assert error.detail == "Igni said: bad secret"


def test_invalid_client_on_a_400_is_an_auth_failure_too() -> None:
    # Given / When / Then
    error = rejection(400, body(error="invalid_client"))
    assert isinstance(error, UpstreamAuthFailed)
    assert error.detail is None


def test_another_refusal_is_a_bad_response_naming_status_and_code() -> None:
    # Given / When / Then
    error = rejection(400, body(error="invalid_scope", message="no such scope"))
    assert isinstance(error, UpstreamBadResponse)
    assert error.kind == "rejected"
    assert error.message == "Igni refused the token request with HTTP 400 (invalid_scope)"
    assert error.detail == "Igni said: no such scope"
    plain = rejection(403, b"<html>")
    assert plain.message == "Igni refused the token request with HTTP 403"
    assert plain.detail is None


def test_a_server_naming_the_method_it_wants_gets_the_setting_named() -> None:
    # Given a form-authenticated request refused by a server that names client_secret_basic
    text = "The client cannot authenticate with methods: ['client_secret_basic']"
    error = rejection(400, body(error="invalid_client", error_description=text))
    # When / Then the message names the setting and the method
    assert error.message == (
        "Igni refused client authentication with client_secret_post (invalid_client) and names "
        "client_secret_basic as what it accepts: set "
        "IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_basic (or the profile's "
        "token_endpoint_auth_method)"
    )


def test_a_server_naming_both_methods_names_the_first_in_order() -> None:
    # Given a Basic request refused by a server that names both methods
    text = "use client_secret_post or client_secret_basic"
    error = rejection(
        401,
        body(error="invalid_client", error_description=text),
        auth_method="private_key_jwt",
    )
    # When / Then both are named, and the setting is the first of them
    assert "names client_secret_basic or client_secret_post as what it accepts" in error.message
    assert "IGNI_TOKEN_ENDPOINT_AUTH_METHOD=client_secret_basic " in error.message


def test_a_server_naming_the_method_already_used_is_not_told_to_switch() -> None:
    # Given a form request refused by a server naming client_secret_post (the one used)
    text = "methods: ['client_secret_post']"
    error = rejection(401, body(error="invalid_client", error_description=text))
    # When / Then the credentials themselves are blamed
    assert error.message.startswith("Igni rejected the client credentials (invalid_client): check")


def test_a_basic_challenge_on_a_401_suggests_basic_but_not_on_a_400() -> None:
    # Given a form request refused with a Basic challenge
    on_401 = rejection(401, b"", basic_wanted=True)
    on_400 = rejection(400, body(error="invalid_client"), basic_wanted=True)
    # When / Then a 401 names client_secret_basic as a possible cause, a 400 does not
    assert on_401.message == (
        "Igni rejected the client credentials sent in the form (invalid_client, "
        "client_secret_post) and asks for HTTP Basic authentication: the server may "
        "want client_secret_basic (set IGNI_TOKEN_ENDPOINT_AUTH_METHOD or the profile's "
        "token_endpoint_auth_method), or client_id and client_secret are wrong"
    )
    assert "asks for HTTP Basic" not in on_400.message


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        ("invalid_client", "invalid_client"),
        ("slow_down2", "slow_down2"),
        ("x" * 64, "x" * 64),
        ("x" * 65, None),
        ("bad code", None),
        ("caf\u00e9", None),
        ("\u0663", None),
        ("", None),
        ("_", None),
        (5, None),
    ],
)
def test_only_a_short_token_like_error_code_is_kept(code: object, kept: str | None) -> None:
    # Given / When / Then
    assert _error_fields(json.dumps({"error": code}).encode())[0] == kept


def test_the_description_is_preferred_to_a_message_and_must_be_text() -> None:
    # Given / When / Then
    both = {"error_description": "described", "message": "messaged"}
    assert _error_fields(json.dumps(both).encode()) == (None, "described")
    odd = {"error_description": 5, "message": "messaged"}
    assert _error_fields(json.dumps(odd).encode()) == (None, "messaged")
    assert _error_fields(json.dumps({"error_description": ""}).encode()) == (None, None)
    assert _error_fields(b"[1]") == (None, None)
    assert _error_fields(b"{") == (None, None)


def test_a_servers_text_is_printable_ascii_folded_and_cut() -> None:
    # Given text with control characters, non-ASCII and runs of spaces
    # When / Then each run becomes one space, the ends are trimmed, at most 200 characters
    assert sanitize("  a\r\n\tb\u00e9c  d ") == "a b c d"
    assert sanitize("\x00\x01 ") is None
    assert MAX_UPSTREAM_TEXT == 200
    assert sanitize("y" * 500) == "y" * 200


@pytest.mark.parametrize(
    ("challenge", "basic"),
    [
        (None, False),
        ("", False),
        ('Basic realm="igni"', True),
        ('Bearer realm="x", basic', True),
        ("basic", True),
        ('Basicrealm="x"', False),
        ('Bearer realm="basic"', False),
    ],
)
def test_a_basic_challenge_is_the_scheme_only(challenge: str | None, *, basic: bool) -> None:
    # Given / When / Then
    assert basic_challenge(challenge) is basic
