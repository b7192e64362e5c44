"""The refresh lease on a credential set's shared item, and the one loop that settles it.

Every environment that cannot simply serve the cached token (missing, past its refresh point,
minted from an older secret version, or reported as rejected) runs the same loop on the item:
serve what the caller may have, wait while another environment holds the lease, or take the
lease with a conditional write fenced on the token it judged. Only the environment whose write
wins calls Igni. Its commit is conditional on still holding the lease, and there is no
heartbeat: Lambda freezes environments between invocations, so a lease simply expires.

The caller's policy (freshness, backoff, rate limit) is the `decide` callback; this module
knows the item's protocol and nothing of Igni, so the state machine can be driven by a fake
table and an injected clock.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from token_vendor.errors import StoreUnavailable, UpstreamUnavailable
from token_vendor.models import CachedToken, Record
from token_vendor.vending.exchange import MIN_EXCHANGE_SECONDS

if TYPE_CHECKING:
    # Types only: the policy imports no AWS or HTTP SDK; the adapters are passed in.
    from token_vendor.aws.token_table import TokenTable

# Kept back from a lease for the commit: the exchange must end before a second holder starts.
COMMIT_RESERVE_SECONDS = 0.5


@dataclass(frozen=True)
class Serve:
    """Answer with this token from the shared item; `fresh` ones are worth keeping in memory."""

    token: CachedToken
    fresh: bool = True


@dataclass(frozen=True)
class Take:
    """The item needs a new token: take the lease, fenced on the token fingerprint `seen`.

    `stale` is what the caller may still be served while another environment refreshes;
    `forced_floor` makes it a forced refresh, refused after another one since that time.
    """

    seen: str | None
    stale: CachedToken | None = None
    forced_floor: float | None = None


@dataclass(frozen=True)
class Taken:
    """This environment holds the lease for `window` seconds; `record` is the item it took."""

    record: Record | None
    window: float
    stale: CachedToken | None


Decide = Callable[[Record | None, float], Serve | Take]


class Lease:
    """Takes, waits for and hands back the refresh lease of the items of one table."""

    def __init__(
        self,
        table: TokenTable,
        *,
        lease_seconds: float,
        owner_id: str | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._table = table
        self._lease_seconds = lease_seconds
        # Identifies this execution environment as a lease holder (the fencing token).
        self._owner = owner_id or uuid.uuid4().hex
        self._wall = wall
        self._mono = monotonic
        self._sleep = sleep
        self._jitter = jitter

    @property
    def owner(self) -> str:
        return self._owner

    def renew_owner(self) -> None:
        """A new owner id: environments restored from one snapshot must not share one."""
        self._owner = uuid.uuid4().hex

    def settle(
        self, key: str, record: Record | None, *, deadline: float, decide: Decide
    ) -> Serve | Taken:
        """Serve, wait or take the lease, re-deciding on every new view of the item."""
        while True:
            now = self._wall()
            decision = decide(record, now)
            if isinstance(decision, Serve):
                return decision
            if record is not None and record.lease_held(now):
                if decision.stale is not None:
                    # Another environment is refreshing: the current token still serves.
                    return Serve(decision.stale, fresh=False)
                record = self._wait_for_change(key, record, deadline)
                continue
            window = self.window(deadline)
            acquired, current = self._table.try_acquire_lease(
                key,
                owner=self._owner,
                now=now,
                lease_until=now + window,
                seen_fingerprint=decision.seen,
                forced_floor=decision.forced_floor,
            )
            if acquired:
                return Taken(record=record, window=window, stale=decision.stale)
            record = current if current is not None else self._table.get(key)

    def window(self, deadline: float) -> float:
        """How long a lease taken now may last: the configured length, within the deadline."""
        remaining = deadline - self._mono()
        if remaining < MIN_EXCHANGE_SECONDS + COMMIT_RESERVE_SECONDS:
            raise UpstreamUnavailable("too little time left to refresh the token", retry_after=1)
        return min(self._lease_seconds, remaining)

    def exchange_deadline(self, deadline: float, window: float) -> float:
        """When an exchange under a lease just taken must be over (monotonic clock)."""
        return min(deadline, self._mono() + window - COMMIT_RESERVE_SECONDS)

    def commit(
        self, key: str, token: CachedToken, *, replaced: Record | None
    ) -> tuple[bool, Record | None]:
        """Store the new token and free the lease, if this environment still holds it.

        `replaced` is the item the lease was taken on: its tokens' fingerprints are kept.
        """
        return self._table.commit(
            key,
            owner=self._owner,
            token=token,
            now=self._wall(),
            recent=replaced.succession() if replaced is not None else (),
        )

    def release_quietly(self, key: str) -> None:
        # If the table is unreachable the lease simply expires by itself.
        with contextlib.suppress(StoreUnavailable):
            self._table.release(key, owner=self._owner)

    def _wait_for_change(self, key: str, seen: Record, deadline: float) -> Record | None:
        """Poll (consistent reads, jittered) until the holder commits, fails or lets it expire."""
        while True:
            pause = 0.05 + 0.15 * self._jitter()
            if self._mono() + pause + 0.2 > deadline:
                raise UpstreamUnavailable(
                    "timed out waiting for another execution environment to refresh the token",
                    retry_after=1,
                )
            self._sleep(pause)
            record = self._table.get(key)
            now = self._wall()
            if (
                record is None
                or record.token_fingerprint != seen.token_fingerprint
                or not record.lease_held(now)
                or record.lease_owner != seen.lease_owner
            ):
                return record
