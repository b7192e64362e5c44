"""The answer a caller gets: a token judged vendable at the moment the answer is made, with the
tier that answered. Every path of the service ends here, so no path can vend a token that ran
out while an exchange or a re-check took its time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from token_vendor.config import Freshness, Profile
from token_vendor.errors import InvalidRequest, UpstreamUnavailable
from token_vendor.models import CachedToken
from token_vendor.observability import Telemetry
from token_vendor.vending.freshness import is_vendable, max_min_ttl

MEMORY = "memory"
DYNAMODB = "dynamodb"
UPSTREAM = "upstream"


@dataclass(frozen=True)
class Vended:
    """A token handed to a caller, with the tier that answered."""

    token: CachedToken
    tier: str

    def body(self, now: float) -> dict[str, Any]:
        return {
            "access_token": self.token.access_token,
            "token_type": self.token.token_type,
            "expires_in": max(0, math.floor(self.token.expires_at - now)),
            "expires_at": self.token.expires_at,
        }


class Answers:
    """Judges a token at the moment of the answer and counts what was vended."""

    def __init__(
        self, policy: Freshness, telemetry: Telemetry, wall: Callable[[], float] = time.time
    ) -> None:
        self._policy = policy
        self._telemetry = telemetry
        self._wall = wall

    def vendable(self, token: CachedToken, min_ttl: int) -> bool:
        return is_vendable(token, self._wall(), self._policy, min_ttl)

    def fresh_one(self, profile: Profile, token: CachedToken, tier: str, min_ttl: int) -> Vended:
        """A token just exchanged; one that cannot meet `min_ttl` was asked too much of."""
        if not self.vendable(token, min_ttl) and self.vendable(token, 0):
            raise InvalidRequest(
                f"min_ttl={min_ttl} exceeds what a fresh token can give "
                f"({max_min_ttl(token.lifetime, self._policy)} s)"
            )
        return self.vended(profile, token, tier, min_ttl)

    def vended(self, profile: Profile, token: CachedToken, tier: str, min_ttl: int) -> Vended:
        """The answer, judged now: never a token past its vend margin (or short of min_ttl)."""
        if not self.vendable(token, min_ttl):
            raise UpstreamUnavailable(
                "the token at hand ran out while the answer was made; retry", retry_after=1
            )
        self._telemetry.vended(profile.name, tier)
        return Vended(token=token, tier=tier)


def seconds_until(moment: float, now: float) -> int:
    """Whole seconds (at least 1) until `moment`: a Retry-After that is never too short."""
    return max(1, math.ceil(moment - now))
