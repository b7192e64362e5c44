"""Vending without the shared table: while DynamoDB (or KMS behind it) is unreachable, each
environment serves its memory, else exchanges once, and keeps for itself the rules the item
keeps for the fleet (a report must name a token it vended; one forced exchange per interval)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from token_vendor.config import Config, Profile
from token_vendor.errors import UnknownToken
from token_vendor.vending.answers import MEMORY, UPSTREAM, Answers, Vended
from token_vendor.vending.decisions import forced_too_soon, not_vended_here
from token_vendor.vending.exchange import Exchange
from token_vendor.vending.memory import MemoryTier
from token_vendor.vending.versions import SecretVersions


class Standalone:
    """One environment on its own: memory first, then one exchange at a time per key."""

    def __init__(
        self,
        config: Config,
        *,
        versions: SecretVersions,
        exchange: Exchange,
        memory: MemoryTier,
        answers: Answers,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._versions = versions
        self._exchange = exchange
        self._memory = memory
        self._answers = answers
        self._mono = monotonic
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Forced exchanges made alone (monotonic time, per key).
        self._forced: dict[str, float] = {}

    def vend(
        self,
        profile: Profile,
        key: str,
        *,
        deadline: float,
        min_ttl: int,
        reject: str | None = None,
    ) -> Vended:
        """DynamoDB is unreachable: serve memory, else exchange once per environment.

        What the item enforces for the fleet, each environment enforces for itself meanwhile:
        a report must name a token it vended, and a forced exchange happens at most once per
        FORCED_REFRESH_INTERVAL_SECONDS.
        """
        with self._lock(key):
            if reject is not None and not self._memory.vended(key, reject):
                raise UnknownToken(not_vended_here(profile))
            entry = self._memory.get(key)
            token = entry[0] if entry is not None else None
            if (
                token is not None
                and token.fingerprint != reject
                and self._answers.vendable(token, min_ttl)
                and self._versions.is_current(profile, token)
                # Again: a hanging re-check may have used up the token's time.
                and self._answers.vendable(token, min_ttl)
            ):
                return self._answers.vended(profile, token, MEMORY, min_ttl)
            if reject is not None:
                # A report that would make this environment exchange: a forced refresh.
                self._limit_forced(profile, key)
            token, _ = self._exchange(
                profile, min(deadline, self._mono() + self._config.lease_seconds)
            )
            self._memory.put(key, token)
            return self._answers.fresh_one(profile, token, UPSTREAM, min_ttl)

    def _limit_forced(self, profile: Profile, key: str) -> None:
        interval = self._config.forced_refresh_interval_seconds
        last = self._forced.get(key)
        now = self._mono()
        if last is not None and now - last < interval:
            raise forced_too_soon(profile, interval, last + interval, now)
        self._forced[key] = now

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())
