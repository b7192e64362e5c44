"""Freshness at its boundaries: the exact second a token stops being vendable or fresh, the
`min_ttl` a caller asked for, the JWT `exp` of every payload length, and the 8192-character
guard. Each test pins one edge a one-character change to freshness.py would move."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime

import pytest

from token_vendor.config import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, Freshness
from token_vendor.models import CachedToken, fingerprint
from token_vendor.vending.freshness import (
    MAX_JWT_EXP,
    effective_expiry,
    is_fresh,
    is_vendable,
    jwt_exp,
    max_min_ttl,
    refresh_at,
    vend_margin,
)

POLICY = Freshness()
NOW = 1_800_000_000.0


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_segment(claims: dict[str, object], length: int) -> str:
    """The unpadded base64url of `claims` plus a filler field, exactly `length` characters."""
    # base64 makes 4 characters of 3 bytes: start the search just short of the answer
    for filler in range(max(0, length * 3 // 4 - 64), length):
        segment = b64(json.dumps({**claims, "f": "x" * filler}).encode())
        if len(segment) == length:
            return segment
    raise AssertionError(f"no segment of length {length}")


def token(expires_at: float, *, issued_at: float = NOW - 600.0) -> CachedToken:
    return CachedToken("t", "Bearer", issued_at, int(expires_at), "v1")


# --------------------------------------------------------------------- vendable, fresh


def test_a_token_with_exactly_min_ttl_left_is_vendable() -> None:
    # Given a 3600 s token with 1000 s left (margin 300 s)
    cached = token(NOW + 1000, issued_at=NOW - 2600)
    # When / Then a caller asking for exactly 1000 s gets it, one asking 1001 s does not
    assert is_vendable(cached, NOW, POLICY, min_ttl=1000)
    assert not is_vendable(cached, NOW, POLICY, min_ttl=1001)


def test_a_token_with_exactly_its_vend_margin_left_is_not_vendable() -> None:
    # Given a 3600 s token (margin min(300 s, 10 %) = 300 s)
    issued = NOW - 3300
    # When it has 300 s left, or 301 s
    # Then only the one with more than the margin is vendable
    assert not is_vendable(token(NOW + 300, issued_at=issued), NOW, POLICY)
    assert is_vendable(token(NOW + 301, issued_at=issued - 1), NOW, POLICY)


def test_remaining_time_is_counted_in_whole_seconds_rounded_down() -> None:
    # Given a token with 300.5 s left (margin 300 s)
    cached = token(NOW + 301, issued_at=NOW - 3299)
    # When / Then half a second over the margin is not a whole second over it
    assert not is_vendable(cached, NOW + 0.5, POLICY)
    assert is_vendable(cached, NOW - 0.5, POLICY)


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(600, 60.0), (3000, 300.0), (3600, 300.0), (86400, 300.0)]
)
def test_the_vend_margin_is_300_s_or_10_percent_whichever_is_less(
    lifetime: float, margin: float
) -> None:
    # Given / When / Then
    assert vend_margin(lifetime, POLICY) == pytest.approx(margin)


def test_a_token_refreshes_at_75_percent_of_its_life_and_is_not_fresh_from_then() -> None:
    # Given a 4000 s token issued at NOW
    cached = CachedToken("t", "Bearer", NOW, int(NOW + 4000), "v1")
    # When / Then its refresh point is 3000 s in, fresh just before, stale from that moment
    assert refresh_at(cached, POLICY) == NOW + 3000
    assert is_fresh(cached, NOW + 2999.5, POLICY)
    assert not is_fresh(cached, NOW + 3000, POLICY)


def test_a_cached_tokens_lifetime_and_fingerprint() -> None:
    # Given a token issued 0.5 s into a second, expiring 600 s later
    cached = CachedToken("abc", "Bearer", NOW + 0.5, int(NOW + 600), "v1")
    # When / Then the lifetime is from issue to expiry, the fingerprint sha256's first 12 hex
    assert cached.lifetime == 599.5
    assert cached.fingerprint == "ba7816bf8f01" == fingerprint("abc")


@pytest.mark.parametrize(
    ("lifetime", "most"), [(600, 540), (599.6, 540), (3600, 3300), (3600.0000004, 3300)]
)
def test_the_most_min_ttl_a_fresh_token_can_give(lifetime: float, most: int) -> None:
    # Given a token lifetime as recorded (whole-second expiries: 600 s can be 599.6 s)
    # When / Then the most a fresh one of that lifetime could promise is its lifetime less margin
    assert max_min_ttl(lifetime, POLICY) == most


# ------------------------------------------------------------------------ effective expiry


def test_an_announced_lifetime_is_counted_from_the_exchange_in_whole_seconds() -> None:
    # Given an exchange at NOW + 0.7 announcing 60 s, and an opaque token
    # When / Then the expiry is floored to a whole second
    assert effective_expiry(NOW + 0.7, 60, "opaque") == math.floor(NOW + 60.7)


def test_without_a_lifetime_or_claim_the_default_of_an_hour_applies() -> None:
    # Given no expires_in and an opaque token
    # When / Then the default lifetime, 3600 s, applies (or the one configured)
    assert DEFAULT_EXPIRES_IN == 3600
    assert effective_expiry(NOW, None, "opaque") == NOW + 3600
    assert effective_expiry(NOW, None, "opaque", default_expires_in=120) == NOW + 120


def test_without_a_lifetime_a_claim_at_the_exchange_instant_is_not_believed() -> None:
    # Given no expires_in and a JWT whose exp is the exchange time itself
    jwt = f"{b64(b'{}')}.{b64(json.dumps({'exp': int(NOW)}).encode())}.c2ln"
    # When / Then the claim does not give a lifetime: exp == issued_at is not "in the future",
    # and the earlier-claim rule then applies to the default lifetime
    assert effective_expiry(NOW, None, jwt) == int(NOW)
    # while a claim one second later is the expiry
    later = f"{b64(b'{}')}.{b64(json.dumps({'exp': int(NOW) + 1}).encode())}.c2ln"
    assert effective_expiry(NOW, None, later) == int(NOW) + 1


def test_without_a_lifetime_a_claim_past_ten_years_falls_back_to_the_default() -> None:
    # Given no expires_in and a JWT exp one second past ten years ahead
    exp = int(NOW) + MAX_EXPIRES_IN + 1
    jwt = f"{b64(b'{}')}.{b64(json.dumps({'exp': exp}).encode())}.c2ln"
    # When / Then the default lifetime applies
    assert effective_expiry(NOW, None, jwt) == NOW + DEFAULT_EXPIRES_IN


def test_an_earlier_claim_shortens_the_announced_lifetime_and_a_later_one_does_not() -> None:
    # Given an announced 3600 s
    early = f"{b64(b'{}')}.{b64(json.dumps({'exp': int(NOW) + 100}).encode())}.c2ln"
    late = f"{b64(b'{}')}.{b64(json.dumps({'exp': int(NOW) + 7200}).encode())}.c2ln"
    # When / Then the earlier claim wins, the later is ignored
    assert effective_expiry(NOW, 3600, early) == NOW + 100
    assert effective_expiry(NOW, 3600, late) == NOW + 3600


# ----------------------------------------------------------------------------- JWT exp


# (no base64 text is 1 character long modulo 4)
@pytest.mark.parametrize("payload_length", [40, 42, 43, 44, 46, 47])
@pytest.mark.parametrize("header", ["e30", "eyJ9", "eyJhIjoxfQ", "eyJhbGciOiJub25lIn0"])
@pytest.mark.parametrize("signature", ["", "c2", "c2ln", "c2lnbg", "c2lnbmE"])
def test_the_exp_of_a_payload_of_any_length_is_read(
    payload_length: int, header: str, signature: str
) -> None:
    # Given a JWT whose payload and other segments have every length modulo 4 (unpadded)
    payload = claims_segment({"exp": 1_900_000_000}, payload_length)
    # When its exp is read
    # Then it is the claim, whatever the lengths: the padding is the payload's own
    assert jwt_exp(f"{header}.{payload}.{signature}") == 1_900_000_000


def test_a_payload_of_8192_characters_is_read_and_one_more_is_not() -> None:
    # Given payloads of exactly 8192 characters, and 8193 (a character base64 skips added)
    payload = claims_segment({"exp": 1_900_000_000}, 8192)
    # When / Then the guard admits 8192 characters and no more, whatever they decode to
    assert jwt_exp(f"e30.{payload}.c2ln") == 1_900_000_000
    assert jwt_exp(f"e30.{payload}$.c2ln") is None


@pytest.mark.parametrize("token_text", ["e30.{p}", "e30.{p}.c2ln.more", "{p}", "e30.{p}.c2ln."])
def test_only_a_three_segment_token_has_an_exp(token_text: str) -> None:
    # Given a valid payload in a token that is not header.payload.signature
    payload = b64(json.dumps({"exp": 1_900_000_000}).encode())
    # When / Then no exp is read
    assert jwt_exp(token_text.format(p=payload)) is None


@pytest.mark.parametrize(
    ("claim", "exp"),
    [
        (1_900_000_000, 1_900_000_000),
        (1_900_000_000.9, 1_900_000_000),
        (-5, 0),
        (-0.5, 0),
        (MAX_JWT_EXP, MAX_JWT_EXP),
        (MAX_JWT_EXP + 1, None),
        (True, None),
        ("1900000000", None),
        (None, None),
    ],
)
def test_the_exp_claim_is_a_number_floored_bounded_and_never_below_zero(
    claim: object, exp: int | None
) -> None:
    # Given a JWT with this exp claim
    jwt = f"e30.{b64(json.dumps({'exp': claim}).encode())}.c2ln"
    # When / Then
    assert jwt_exp(jwt) == exp


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"exp"', b"5", b"{", b"\xff\xfe"])
def test_a_payload_that_is_not_a_json_object_has_no_exp(payload: bytes) -> None:
    # Given / When / Then
    assert jwt_exp(f"e30.{b64(payload)}.c2ln") is None


def test_the_latest_exp_believed_is_the_last_second_of_year_9999() -> None:
    # Given / When / Then
    assert datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() == MAX_JWT_EXP
