"""The token service: the two cache tiers, the refresh lease, the shared backoff, rotation.

Decisions about one credential set are taken on one DynamoDB item through the refresh lease
(lease), so that one execution environment of the fleet calls Igni per refresh and the others
serve the current token while it is vendable, or wait for the commit. What a view of the item
allows is decisions.py's; what a caller is answered, answers.py's; without the table, each
environment vends on its own (standalone.py).
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from token_vendor.config import Config, Profile, same_secret
from token_vendor.errors import (
    ConfigurationError,
    SecretUnavailable,
    StoreUnavailable,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.models import CachedToken, Record, cache_key, fingerprint
from token_vendor.observability import Telemetry
from token_vendor.vending.answers import DYNAMODB, MEMORY, UPSTREAM, Answers, Vended
from token_vendor.vending.decisions import Decisions
from token_vendor.vending.exchange import Exchange
from token_vendor.vending.freshness import is_fresh
from token_vendor.vending.lease import Lease, Serve, Taken
from token_vendor.vending.memory import MemoryTier
from token_vendor.vending.standalone import Standalone
from token_vendor.vending.versions import RecheckPause, SecretVersions

_GAVE_UP = (UpstreamAuthFailed, UpstreamUnavailable, UpstreamBadResponse, ConfigurationError)

if TYPE_CHECKING:
    # Types only: the policy imports no AWS or HTTP SDK; the adapters are passed in.
    from token_vendor.aws.token_table import TokenTable


class TokenService:
    """Vends tokens for the configured profiles; collaborators are passed in."""

    def __init__(
        self,
        config: Config,
        *,
        versions: SecretVersions,
        exchange: Exchange,
        table: TokenTable,
        lease: Lease,
        memory: MemoryTier,
        telemetry: Telemetry,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._policy = config.freshness
        self._versions = versions
        self._exchange = exchange
        self._table = table
        self._lease = lease
        self._memory = memory
        self._telemetry = telemetry
        self._wall = wall
        self._mono = monotonic
        self._jitter = jitter
        self._table_recheck = RecheckPause(config.recheck_pause_seconds, monotonic)
        self._answers = Answers(self._policy, telemetry, wall)
        self._decisions = Decisions(config, versions, telemetry)
        self._standalone = Standalone(
            config,
            versions=versions,
            exchange=exchange,
            memory=memory,
            answers=self._answers,
            monotonic=monotonic,
        )

    @property
    def lease_owner(self) -> str:
        """This environment's lease owner id (each restored SnapStart environment has its own)."""
        return self._lease.owner

    # ----------------------------------------------------------------- public operations

    def vend(self, profile: Profile, *, deadline: float, min_ttl: int = 0) -> Vended:
        """A token with at least `min_ttl` seconds (and the vend margin) left.

        A token in memory that can still be vended is only ever re-checked (against the secret's
        version and the shared item) with short, single-attempt reads; when one fails, that
        re-check is skipped for a while and the token at hand is served, so that a hanging AWS
        endpoint costs the first request of an outage about a second, not the full budget.
        """
        key = cache_key(profile)
        entry = self._memory.get(key)
        if entry is None:
            return self._vend_shared(profile, key, deadline=deadline, min_ttl=min_ttl)
        token, age = entry
        self._decisions.check_min_ttl(token, min_ttl)
        if not self._answers.vendable(token, min_ttl):
            return self._vend_shared(profile, key, deadline=deadline, min_ttl=min_ttl)
        current = self._versions.is_current(profile, token)
        # Judged again after each re-check: a hanging one may have used up the token's time.
        if (
            current
            and age < self._config.memory_revalidate_seconds
            and is_fresh(token, self._wall(), self._policy)
        ) or self._table_recheck.active():
            return self._from_memory(profile, key, token, deadline=deadline, min_ttl=min_ttl)
        try:
            record = self._table.get(key, quick=True)
        except StoreUnavailable as exc:
            self._table_recheck.start()
            self._telemetry.store_unavailable(profile.name, str(exc))
            return self._from_memory(profile, key, token, deadline=deadline, min_ttl=min_ttl)
        return self._settle_shared(profile, key, record, deadline=deadline, min_ttl=min_ttl)

    def _from_memory(
        self, profile: Profile, key: str, token: CachedToken, *, deadline: float, min_ttl: int
    ) -> Vended:
        """The token at hand if it still can be vended now, else the shared tier's answer."""
        if self._answers.vendable(token, min_ttl):
            return self._answers.vended(profile, token, MEMORY, min_ttl)
        return self._vend_shared(profile, key, deadline=deadline, min_ttl=min_ttl)

    def force_refresh(self, profile: Profile, rejected_token: str, *, deadline: float) -> Vended:
        """Compare-and-refresh: replace the token only if it is still the rejected one.

        Only a token this service vended for the profile (the current one, or one it replaced
        recently) may be reported; anything else is UnknownToken, with no upstream call. The
        reported token stays in the item (and is vended to everyone else) until its
        replacement is committed; if the exchange fails, only the reporter hears of it.
        """
        key = cache_key(profile)
        rejected = fingerprint(rejected_token)
        self._memory.drop(key, rejected)
        return self._vend_shared(profile, key, deadline=deadline, min_ttl=0, rejected=rejected)

    def prewarm(self, *, deadline: float) -> dict[str, str]:
        """Refresh every profile's token that has passed its refresh point (scheduled)."""
        outcome: dict[str, str] = {}
        for profile in self._config.profiles.values():
            try:
                vended = self._vend_shared(
                    profile, cache_key(profile), deadline=deadline, min_ttl=0
                )
            except VendorError as exc:
                outcome[profile.name] = exc.code
            else:
                outcome[profile.name] = vended.tier
        return outcome

    def on_secret_rotated(self, secret_ref: str, *, deadline: float) -> dict[str, str]:
        """Drop tokens minted from other versions and exchange the new credentials at once."""
        outcome: dict[str, str] = {}
        for profile in self._config.profiles.values():
            if not same_secret(profile.secret_id, secret_ref):
                continue
            key = cache_key(profile)
            try:
                credentials = self._versions.latest(profile)
                purged = self._table.drop_other_versions(key, keep_version=credentials.version_id)
            except (SecretUnavailable, StoreUnavailable, ConfigurationError) as exc:
                reason = exc.message if isinstance(exc, ConfigurationError) else str(exc)
                self._telemetry.rotation_exchange_failed(profile.name, "?", "unavailable", reason)
                outcome[profile.name] = "unavailable"
                continue
            self._memory.drop(key)
            self._telemetry.rotation(profile.name, credentials.version_id, purged)
            try:
                vended = self._vend_shared(profile, key, deadline=deadline, min_ttl=0)
            except VendorError as exc:
                self._telemetry.rotation_exchange_failed(
                    profile.name, credentials.version_id, exc.code, exc.message
                )
                outcome[profile.name] = exc.code
            else:
                outcome[profile.name] = vended.tier
        return outcome

    # ------------------------------------------------------------------ the shared tier

    def _vend_shared(
        self,
        profile: Profile,
        key: str,
        *,
        deadline: float,
        min_ttl: int,
        rejected: str | None = None,
    ) -> Vended:
        """Read the shared item now, then settle on it."""
        try:
            record = self._table.get(key)
        except StoreUnavailable as exc:
            return self._without_table(
                profile, key, exc, deadline=deadline, min_ttl=min_ttl, rejected=rejected
            )
        return self._settle_shared(
            profile, key, record, deadline=deadline, min_ttl=min_ttl, rejected=rejected
        )

    def _settle_shared(
        self,
        profile: Profile,
        key: str,
        record: Record | None,
        *,
        deadline: float,
        min_ttl: int,
        rejected: str | None = None,
    ) -> Vended:
        """Settle on this view of the shared item (the lease re-reads it as it needs)."""
        try:
            return self._settle(
                profile, key, record, deadline=deadline, min_ttl=min_ttl, rejected=rejected
            )
        except StoreUnavailable as exc:
            return self._without_table(
                profile, key, exc, deadline=deadline, min_ttl=min_ttl, rejected=rejected
            )

    def _without_table(
        self,
        profile: Profile,
        key: str,
        exc: StoreUnavailable,
        *,
        deadline: float,
        min_ttl: int,
        rejected: str | None,
    ) -> Vended:
        # The shared tier is down: this environment answers on its own until it is back.
        self._telemetry.store_unavailable(profile.name, str(exc))
        return self._standalone.vend(
            profile, key, deadline=deadline, min_ttl=min_ttl, reject=rejected
        )

    def _settle(
        self,
        profile: Profile,
        key: str,
        record: Record | None,
        *,
        deadline: float,
        min_ttl: int,
        rejected: str | None,
    ) -> Vended:
        decide = functools.partial(
            self._decisions.decide, profile, min_ttl=min_ttl, rejected=rejected
        )
        outcome = self._lease.settle(key, record, deadline=deadline, decide=decide)
        if isinstance(outcome, Serve):
            if outcome.fresh:
                self._memory.put(key, outcome.token)
            return self._answers.vended(profile, outcome.token, DYNAMODB, min_ttl)
        try:
            token = self._refresh_holding_lease(
                profile, key, outcome, deadline, forced=rejected is not None
            )
        except _GAVE_UP:
            # The failure is logged, counted and shared as a backoff. The token at hand is
            # served only if it can still be vended now, after the exchange's time: otherwise
            # the caller hears the failure itself.
            if outcome.stale is None or not self._answers.vendable(outcome.stale, min_ttl):
                raise
            return self._answers.vended(profile, outcome.stale, DYNAMODB, min_ttl)
        return self._answers.fresh_one(profile, token, UPSTREAM, min_ttl)

    def _refresh_holding_lease(
        self, profile: Profile, key: str, taken: Taken, deadline: float, *, forced: bool
    ) -> CachedToken:
        """Exchange and commit; on any failure share the backoff and release the lease."""
        record = taken.record
        # A reported token is not served back to its reporter, but the fleet still vends it.
        reported = record.token if forced and record is not None else None
        still_vending = taken.stale is not None or (
            reported is not None and self._answers.vendable(reported, 0)
        )
        failures = (record.failures if record is not None else 0) + 1
        try:
            token, credentials = self._exchange(
                profile, self._lease.exchange_deadline(deadline, taken.window)
            )
        except UpstreamAuthFailed as exc:
            version = self._versions.known_version(profile) or ""
            self._telemetry.auth_failed(profile.name, version)
            self._record_failure(key, failures, exc, profile, still_vending, auth_version=version)
            raise
        except (UpstreamUnavailable, UpstreamBadResponse, ConfigurationError) as exc:
            self._record_failure(key, failures, exc, profile, still_vending)
            raise
        except Exception:
            # Nobody foresaw it, so it is logged with its trace; the fleet still backs off and
            # the lease is freed at once, as for any other failure.
            self._telemetry.exchange_crashed(profile.name)
            error = UpstreamBadResponse("the token exchange failed unexpectedly")
            self._record_failure(key, failures, error, profile, still_vending)
            raise error from None
        except BaseException:
            self._lease.release_quietly(key)
            raise
        try:
            committed, current = self._lease.commit(key, token, replaced=record)
        except StoreUnavailable as exc:
            # The token is good and served; the fleet will exchange again without it. The lease
            # is freed now if the table lets us (else it expires by itself).
            self._telemetry.store_unavailable(profile.name, str(exc))
            self._lease.release_quietly(key)
            committed, current = True, None
        if not committed:
            self._telemetry.lease_lost(profile.name)
            if (
                current is not None
                and current.token is not None
                and current.token.secret_version == credentials.version_id
                and self._answers.vendable(current.token, 0)
            ):
                token = current.token
        self._memory.put(key, token)
        return token

    def _record_failure(
        self,
        key: str,
        failures: int,
        exc: VendorError,
        profile: Profile,
        still_vending: bool,
        *,
        auth_version: str | None = None,
    ) -> None:
        """Count the failure once, share the backoff through the item, release the lease."""
        now = self._wall()
        capped = min(
            self._config.refresh_backoff_max_seconds,
            self._config.refresh_backoff_base_seconds * 2 ** min(failures - 1, 16),
        )
        backoff = capped * (0.5 + 0.5 * self._jitter())
        if exc.retry_after is not None:
            backoff = max(backoff, float(exc.retry_after))
        # Whatever Igni asked for, the fleet asks again within the configured maximum.
        backoff = min(backoff, self._config.refresh_backoff_max_seconds)
        self._telemetry.refresh_failed(profile.name, exc.kind, exc.message, still_vending)
        try:
            self._table.record_failure(
                key,
                owner=self._lease.owner,
                backoff_until=now + backoff,
                failures=failures,
                failure_code=exc.code,
                auth_failed_until=(
                    now + self._config.auth_failure_cache_seconds
                    if auth_version is not None
                    else None
                ),
                auth_failed_version=auth_version,
            )
        except StoreUnavailable as store_exc:
            # The backoff is lost, but the lease need not be: free it if the table lets us.
            self._telemetry.store_unavailable(profile.name, str(store_exc))
            self._lease.release_quietly(key)
        # When the fleet (this environment, if the table is away) will try Igni again; for
        # rejected credentials, not before their memory lapses.
        retry_after = backoff
        if auth_version is not None:
            retry_after = max(retry_after, float(self._config.auth_failure_cache_seconds))
        exc.retry_after = max(1, math.ceil(retry_after))
