"""Freshness arithmetic: refresh point, vend margin, JWT exp, short lifetimes."""

from __future__ import annotations

import base64
import json

import pytest

from token_vendor.config import Freshness
from token_vendor.models import CachedToken, fingerprint
from token_vendor.vending.freshness import (
    effective_expiry,
    is_fresh,
    is_vendable,
    jwt_exp,
    max_min_ttl,
    vend_margin,
)

POLICY = Freshness()


def _jwt(claims: dict[str, object]) -> str:
    def seg(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256'})}.{seg(claims)}.c2ln"


def _token(issued_at: float, lifetime: int) -> CachedToken:
    return CachedToken("t", "Bearer", issued_at, int(issued_at + lifetime), "v1")


def test_a_48_hour_token_refreshes_at_75_percent_and_is_vended_until_5_minutes_left() -> None:
    # Given Igni's documented 172800 s token issued at t=0
    token = _token(0, 172800)
    # Then it is fresh until 36 h, and vendable until 300 s before expiry
    assert is_fresh(token, 129_599, POLICY)
    assert not is_fresh(token, 129_600, POLICY)
    assert is_vendable(token, 172_800 - 301, POLICY)
    assert not is_vendable(token, 172_800 - 300, POLICY)


@pytest.mark.parametrize("lifetime", [10, 30, 60, 600, 3000])
def test_a_short_lived_token_is_still_cached_for_most_of_its_lifetime(lifetime: int) -> None:
    # Given a token far shorter than the fixed 300 s margin
    token = _token(1000, lifetime)
    # Then the margin scales down to 10 % and the token is vendable for most of its life
    # (80 % at least: validity counts in the whole seconds `expires_in` reports)
    assert vend_margin(lifetime, POLICY) == pytest.approx(min(300, 0.1 * lifetime))
    assert is_vendable(token, 1000 + 0.8 * lifetime, POLICY)
    assert is_fresh(token, 1000 + 0.7 * lifetime, POLICY)
    assert not is_vendable(token, 1000 + 0.95 * lifetime, POLICY)


def test_min_ttl_is_honoured_and_bounded_by_what_a_fresh_token_can_give() -> None:
    token = _token(0, 3600)
    assert is_vendable(token, 0, POLICY, min_ttl=3000)
    assert not is_vendable(token, 1000, POLICY, min_ttl=3000)
    assert max_min_ttl(3600, POLICY) == 3300
    assert max_min_ttl(172800, POLICY) == 172500


def test_an_earlier_jwt_exp_claim_shortens_the_lifetime() -> None:
    # Given a JWT whose exp is 100 s after issue although expires_in says 3600
    token = _jwt({"exp": 1100, "iat": 1000})
    # Then the earlier expiry counts
    assert effective_expiry(1000, 3600, token) == 1100


def test_a_later_jwt_exp_claim_never_extends_the_lifetime() -> None:
    assert effective_expiry(1000, 60, _jwt({"exp": 999_999})) == 1060


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "a.!!!.c",
        _jwt({"exp": "soon"}),
        _jwt({"exp": True}),
        "a." + "x" * 9000 + ".c",
        # Found by the upstream-lifetime review: a payload nested deeply enough raised
        # RecursionError out of json.loads.
        "a." + base64.urlsafe_b64encode(b"[" * 6000).decode().rstrip("=") + ".c",
        _jwt({"exp": float("inf")}),
        _jwt({"exp": float("nan")}),
    ],
)
def test_unreadable_claims_are_ignored(token: str) -> None:
    assert jwt_exp(token) is None
    assert effective_expiry(0, 50, token) == 50


@pytest.mark.parametrize("exp", [10**400, 10**40, 253_402_300_800])
def test_an_exp_claim_too_far_ahead_to_shorten_anything_is_ignored(exp: int) -> None:
    # Given a JWT whose exp is past year 9999 (10**400 would overflow a float)
    token = _jwt({"exp": exp})
    # Then the claim is ignored and expires_in decides, without an OverflowError
    assert jwt_exp(token) is None
    assert effective_expiry(1000, 60, token) == 1060


@pytest.mark.parametrize("exp", [-1, -(10**400), -1e300])
def test_an_exp_claim_before_the_epoch_means_expired_without_overflow(exp: float) -> None:
    token = _jwt({"exp": exp})
    assert jwt_exp(token) == 0
    assert effective_expiry(1000, 60, token) == 0


def test_fingerprint_is_short_stable_and_not_the_token() -> None:
    value = fingerprint("secret-token-value")
    assert value == fingerprint("secret-token-value")
    assert len(value) == 12
    assert "secret" not in value


def test_a_vendable_token_always_has_whole_seconds_left() -> None:
    # Given a 10 s token 1.05 s before expiry: more than the 1 s margin, less than 2 whole s
    token = _token(1000, 10)
    # Then it is not vended: its expires_in would read 1 now and 0 a moment later
    assert not is_vendable(token, 1008.95, POLICY)
    assert is_vendable(token, 1007.99, POLICY)


# ------------------------------------------------- issue 13: no expires_in from the server

TEN_YEARS = 315_360_000


def test_without_expires_in_the_jwt_exp_is_the_expiry() -> None:
    # Given a token answer without expires_in, whose JWT exp is 2 h after the exchange
    token = _jwt({"exp": 1000 + 7200})
    # Then the lifetime is exp minus the exchange time, whatever the default says
    assert effective_expiry(1000, None, token) == 8200
    assert effective_expiry(1000.6, None, token, default_expires_in=60) == 8200


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token",
        _jwt({"iat": 1000}),
        _jwt({"exp": "soon"}),
        # exp more than 10 years ahead: not believed as a lifetime
        _jwt({"exp": 1000 + TEN_YEARS + 1}),
        _jwt({"exp": 10**40}),
    ],
)
def test_without_expires_in_or_a_usable_exp_the_default_lifetime_applies(token: str) -> None:
    # Given no expires_in and no JWT exp from now to 10 years ahead
    # Then the configured default lifetime applies (3600 s unless configured)
    assert effective_expiry(1000, None, token) == 1000 + 3600
    assert effective_expiry(1000, None, token, default_expires_in=600) == 1600


def test_without_expires_in_an_exp_of_exactly_ten_years_is_believed() -> None:
    assert effective_expiry(1000, None, _jwt({"exp": 1000 + TEN_YEARS})) == 1000 + TEN_YEARS


@pytest.mark.parametrize("exp", [1000, 999, 0, -5])
def test_without_expires_in_an_exp_already_past_still_means_expired(exp: int) -> None:
    # Given no expires_in and a JWT whose exp is not after the exchange
    # Then the token is expired (the claim still shortens the default), never given an hour
    assert effective_expiry(1000, None, _jwt({"exp": exp})) == max(0, exp)


def test_an_earlier_jwt_exp_still_shortens_a_given_lifetime_whatever_the_default() -> None:
    token = _jwt({"exp": 1100})
    assert effective_expiry(1000, 3600, token, default_expires_in=60) == 1100
    assert effective_expiry(1000, 50, token, default_expires_in=7200) == 1050
