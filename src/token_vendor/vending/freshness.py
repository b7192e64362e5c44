"""Freshness arithmetic: when a token is refreshed ahead, when it can no longer be vended."""

from __future__ import annotations

import base64
import binascii
import json
import math

from token_vendor.config import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, Freshness
from token_vendor.models import CachedToken

# 9999-12-31T23:59:59Z: later `exp` claims are ignored (see jwt_exp).
MAX_JWT_EXP = 253_402_300_799


def effective_expiry(
    issued_at: float,
    expires_in: int | None,
    access_token: str,
    default_expires_in: int = DEFAULT_EXPIRES_IN,
) -> int:
    """Exchange time plus `expires_in`, or the JWT's `exp` claim when that is earlier.

    The claim is read, never verified (there is no key), so it can only shorten a lifetime,
    except when Igni announced no `expires_in` (None): then a claim in the future and at most
    MAX_EXPIRES_IN ahead is the expiry, and failing that `default_expires_in` is the lifetime.
    """
    claimed = jwt_exp(access_token)
    if expires_in is None:
        if claimed is not None and issued_at < claimed <= issued_at + MAX_EXPIRES_IN:
            return claimed
        expires_in = default_expires_in
    expiry = math.floor(issued_at + expires_in)
    if claimed is not None and claimed < expiry:
        return claimed
    return expiry


def jwt_exp(access_token: str) -> int | None:
    parts = access_token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    # Bounded before any float arithmetic, where an int like 10**400 overflows. A claim past
    # MAX_JWT_EXP could never shorten a lifetime (`expires_in` is at most 10 years), so it is
    # ignored; one before the epoch just means expired.
    if isinstance(exp, float) and not math.isfinite(exp):
        return None
    if exp > MAX_JWT_EXP:
        return None
    return max(0, math.floor(exp))


def vend_margin(lifetime: float, policy: Freshness) -> float:
    """The validity a vended token must keep: `min(300 s, 10 %)` of its lifetime by default.

    Proportional to the lifetime so that a short-lived token is still cached for most of it.
    """
    return min(float(policy.min_remaining_seconds), policy.min_remaining_fraction * lifetime)


def refresh_at(token: CachedToken, policy: Freshness) -> float:
    return token.issued_at + policy.refresh_fraction * token.lifetime


def is_fresh(token: CachedToken, now: float, policy: Freshness) -> bool:
    return now < refresh_at(token, policy)


def is_vendable(token: CachedToken, now: float, policy: Freshness, min_ttl: int = 0) -> bool:
    # Whole seconds, as `expires_in` tells them: a token judged vendable is never answered
    # with `"expires_in": 0` a few milliseconds later.
    remaining = math.floor(token.expires_at - now)
    return remaining > vend_margin(token.lifetime, policy) and remaining >= min_ttl


def max_min_ttl(lifetime: float, policy: Freshness) -> int:
    """The most validity a freshly exchanged token of this lifetime could promise a caller."""
    # Expiries are whole seconds, so a 600 s token's recorded lifetime can be 599.6 s.
    nominal = math.ceil(lifetime - 1e-6)
    return math.floor(nominal - vend_margin(nominal, policy))
