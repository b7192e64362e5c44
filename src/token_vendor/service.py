"""The vending logic: two cache tiers, a fenced refresh lease, rotation awareness.

Decisions about one credential set are taken on one DynamoDB item (see token_store), so that
exactly one execution environment of the fleet calls Igni per refresh: the one whose
conditional write took the lease. The others serve the current token while it is still
vendable, or wait for the winner's commit with strongly consistent reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from token_vendor.config import (
    CLIENT_SECRET_POST,
    Config,
    Profile,
    same_secret,
    token_url_for,
)
from token_vendor.errors import (
    BACKOFF_ERRORS,
    ConfigurationError,
    InvalidRequest,
    RefreshRateLimited,
    SecretUnavailable,
    StoreUnavailable,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.freshness import (
    CachedToken,
    effective_expiry,
    fingerprint,
    is_fresh,
    is_vendable,
    max_min_ttl,
)
from token_vendor.igni import IgniClient
from token_vendor.observability import Telemetry
from token_vendor.secret_store import Credentials, SecretStore
from token_vendor.token_store import MemoryTier, Record, TokenTable

MEMORY = "memory"
DYNAMODB = "dynamodb"
UPSTREAM = "upstream"
# Smallest time worth starting an exchange with; below it, answer 503 instead.
MIN_EXCHANGE_SECONDS = 1.0
# A forced re-read of the secret (to learn whether a version is newer) at most this often.
SECRET_RECHECK_SECONDS = 5.0
# The re-checks made while a vendable token is at hand, paused one by one when they fail.
SECRETS = "secrets"
TABLE = "table"


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


def cache_key(profile: Profile) -> str:
    """Identifies a credential set and what is asked of it; holds nothing secret."""
    fields = [
        profile.secret_id,
        profile.token_url or "",
        profile.workspace or "",
        profile.scope or "",
    ]
    material = "\n".join(fields)
    if profile.audience:
        # A newer field joins the material only when set, so that the items of profiles without
        # it keep their key across a deploy. JSON, so that no scope text can imitate it (a
        # secret id never starts with '[').
        material = json.dumps([*fields, profile.audience])
    return "token#" + hashlib.sha256(material.encode()).hexdigest()[:32]


class TokenService:
    """Vends tokens for the configured profiles; collaborators are passed in."""

    def __init__(
        self,
        config: Config,
        *,
        secrets: SecretStore,
        igni: IgniClient,
        table: TokenTable,
        memory: MemoryTier,
        telemetry: Telemetry,
        owner_id: str | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._policy = config.freshness
        self._secrets = secrets
        self._igni = igni
        self._table = table
        self._memory = memory
        self._telemetry = telemetry
        # Identifies this execution environment as a lease holder (fencing token).
        self._owner = owner_id or uuid.uuid4().hex
        self._wall = wall
        self._mono = monotonic
        self._sleep = sleep
        self._jitter = jitter
        self._local_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._secret_rechecked: dict[str, float] = {}
        # Monotonic time until which a re-check (SECRETS, TABLE) is skipped after it failed.
        self._recheck_paused_until: dict[str, float] = {}

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
        self._check_min_ttl(token, min_ttl)
        now = self._wall()
        if not is_vendable(token, now, self._policy, min_ttl):
            return self._vend_shared(profile, key, deadline=deadline, min_ttl=min_ttl)
        current = self._version_current(profile, token)
        if (
            current
            and age < self._config.memory_revalidate_seconds
            and is_fresh(token, now, self._policy)
        ):
            return self._vended(profile, token, MEMORY)
        if self._recheck_paused(TABLE):
            return self._vended(profile, token, MEMORY)
        try:
            record = self._table.get(key, quick=True)
        except StoreUnavailable as exc:
            self._pause_recheck(TABLE)
            self._telemetry.store_unavailable(profile.name, str(exc))
            return self._vended(profile, token, MEMORY)
        return self._vend_shared(
            profile, key, deadline=deadline, min_ttl=min_ttl, record=record, have_record=True
        )

    def force_refresh(self, profile: Profile, rejected_token: str, *, deadline: float) -> Vended:
        """Compare-and-refresh: replace the token only if it is still the rejected one."""
        key = cache_key(profile)
        rejected = fingerprint(rejected_token)
        self._memory.drop(key, rejected)
        try:
            record = self._table.get(key)
        except StoreUnavailable as exc:
            self._telemetry.store_unavailable(profile.name, str(exc))
            return self._vend_direct(profile, key, deadline=deadline, min_ttl=0, reject=rejected)
        try:
            return self._force(profile, key, rejected, record, deadline=deadline)
        except StoreUnavailable as exc:
            self._telemetry.store_unavailable(profile.name, str(exc))
            return self._vend_direct(profile, key, deadline=deadline, min_ttl=0, reject=rejected)

    def _force(
        self, profile: Profile, key: str, rejected: str, record: Record | None, *, deadline: float
    ) -> Vended:
        interval = self._config.forced_refresh_interval_seconds
        while True:
            now = self._wall()
            if record is None or record.token_fingerprint != rejected:
                # The rejected token is no longer current: serve (or make) the current one.
                return self._vend_shared(
                    profile, key, deadline=deadline, min_ttl=0, record=record, have_record=True
                )
            if record.forced_at > now - interval:
                raise RefreshRateLimited(
                    f"a forced refresh of profile '{profile.name}' happened less than "
                    f"{interval} s ago and Igni still rejects its token",
                    retry_after=max(1, math.ceil(record.forced_at + interval - now)),
                )
            if record.lease_held(now):
                record = self._wait_for_change(key, record, deadline)
                continue
            lease = self._lease_window(deadline)
            acquired, current = self._table.try_acquire_lease(
                key,
                owner=self._owner,
                now=now,
                lease_until=now + lease,
                seen_fingerprint=rejected,
                forced_floor=now - interval,
            )
            if acquired:
                # The reported token stays in the item (and is vended to everyone else) until
                # the replacement is committed; if the exchange fails, only the reporter hears.
                still_vending = record.token is not None and is_vendable(
                    record.token, now, self._policy
                )
                return self._refresh_holding_lease(
                    profile, key, record, deadline, lease, still_vending=still_vending
                )
            record = current if current is not None else self._table.get(key)

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
                credentials = self._secrets.current(profile.secret_id, force=True)
                purged = self._table.drop_other_versions(key, keep_version=credentials.version_id)
            except (SecretUnavailable, StoreUnavailable, ConfigurationError) as exc:
                self._telemetry.rotation_exchange_failed(profile.name, "?", "unavailable", str(exc))
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
        record: Record | None = None,
        have_record: bool = False,
    ) -> Vended:
        try:
            if record is None and not have_record:
                record = self._table.get(key)
            return self._settle(profile, key, record, deadline=deadline, min_ttl=min_ttl)
        except StoreUnavailable as exc:
            # The shared tier is down: this environment answers on its own until it is back.
            self._telemetry.store_unavailable(profile.name, str(exc))
            return self._vend_direct(profile, key, deadline=deadline, min_ttl=min_ttl)

    def _settle(
        self, profile: Profile, key: str, record: Record | None, *, deadline: float, min_ttl: int
    ) -> Vended:
        """Serve, wait or refresh, re-deciding on every new view of the shared item."""
        while True:
            now = self._wall()
            token = record.token if record is not None else None
            if record is not None and record.undecryptable:
                self._telemetry.undecryptable(profile.name)
            if token is not None and not self._version_current(profile, token):
                token = None
            vendable = token is not None and is_vendable(token, now, self._policy, min_ttl)
            if token is not None:
                self._check_min_ttl(token, min_ttl)
            if token is not None and vendable and is_fresh(token, now, self._policy):
                self._memory.put(key, token)
                return self._vended(profile, token, DYNAMODB)
            stale = token if vendable else None
            if record is not None:
                blocked = self._blocked(profile, record, now, stale)
                if blocked is not None:
                    return blocked
                if record.lease_held(now):
                    if stale is not None:
                        # Another environment is refreshing: the current token still serves.
                        return self._vended(profile, stale, DYNAMODB)
                    record = self._wait_for_change(key, record, deadline)
                    continue
            lease = self._lease_window(deadline)
            acquired, current = self._table.try_acquire_lease(
                key,
                owner=self._owner,
                now=now,
                lease_until=now + lease,
                seen_fingerprint=record.token_fingerprint if record is not None else None,
            )
            if not acquired:
                record = current if current is not None else self._table.get(key)
                continue
            try:
                vended = self._refresh_holding_lease(
                    profile, key, record, deadline, lease, still_vending=stale is not None
                )
            except (
                UpstreamAuthFailed,
                UpstreamUnavailable,
                UpstreamBadResponse,
                ConfigurationError,
            ):
                # Not needed yet (the token at hand is still vendable): the failure is logged,
                # counted and shared as a backoff, and the caller keeps being served.
                if stale is None:
                    raise
                return self._vended(profile, stale, DYNAMODB)
            if not is_vendable(vended.token, self._wall(), self._policy, min_ttl):
                raise InvalidRequest(
                    f"min_ttl={min_ttl} exceeds what a fresh token can give "
                    f"({max_min_ttl(vended.token.lifetime, self._policy)} s)"
                )
            return vended

    def _blocked(
        self, profile: Profile, record: Record, now: float, stale: CachedToken | None
    ) -> Vended | None:
        """Serve the current token, or fail fast, while refreshes are held back."""
        if record.auth_failed_until > now:
            version = self._current_version(profile)
            if version is None or version == record.auth_failed_version:
                if stale is not None:
                    return self._vended(profile, stale, DYNAMODB)
                # The shared item keeps the code, not the message: the method is named as a
                # possible cause wherever it could be one (the form, Igni's documented way).
                method = (
                    " (or, if Igni asked for HTTP Basic, set client_secret_basic)"
                    if profile.token_endpoint_auth_method == CLIENT_SECRET_POST
                    else ""
                )
                raise UpstreamAuthFailed(
                    "Igni rejected the client credentials (invalid_client) moments ago; "
                    f"fix the secret{method} and retry",
                    retry_after=max(1, math.ceil(record.auth_failed_until - now)),
                )
            # Igni refused an older version: the backoff it set is not about this one.
            return None
        if record.backoff_until > now:
            if stale is not None:
                return self._vended(profile, stale, DYNAMODB)
            # The same status and code as the failure that started the backoff, and the time
            # until the fleet tries again: a caller waiting that long is not refused for it.
            error = BACKOFF_ERRORS.get(record.failure_code or "", UpstreamUnavailable)
            raise error(
                f"refreshing the token failed {record.failures} time(s) in a row "
                f"({record.failure_code or UpstreamUnavailable.code}); backing off",
                retry_after=max(1, math.ceil(record.backoff_until - now)),
            )
        return None

    def _wait_for_change(self, key: str, seen: Record, deadline: float) -> Record | None:
        """Poll (consistent reads, jittered) until the lease holder commits, fails or expires."""
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

    def _refresh_holding_lease(
        self,
        profile: Profile,
        key: str,
        record: Record | None,
        deadline: float,
        lease: float,
        *,
        still_vending: bool = False,
    ) -> Vended:
        """Exchange and commit; on failure share the backoff and release the lease."""
        # The exchange must finish before the lease runs out, or a second holder could start.
        exchange_deadline = min(deadline, self._mono() + lease - 0.5)
        failures = record.failures if record is not None else 0
        try:
            token, credentials = self._exchange(profile, exchange_deadline)
        except UpstreamAuthFailed as exc:
            version = self._known_version(profile) or ""
            self._telemetry.auth_failed(profile.name, version)
            self._record_failure(
                key, failures + 1, exc, profile, still_vending, auth_version=version
            )
            raise
        except (UpstreamUnavailable, UpstreamBadResponse, ConfigurationError) as exc:
            self._record_failure(key, failures + 1, exc, profile, still_vending)
            raise
        except BaseException:
            self._release_quietly(key)
            raise
        now = self._wall()
        try:
            committed, current = self._table.commit(key, owner=self._owner, token=token, now=now)
        except StoreUnavailable as exc:
            self._telemetry.store_unavailable(profile.name, str(exc))
            committed, current = True, None
        if not committed:
            self._telemetry.lease_lost(profile.name)
            if (
                current is not None
                and current.token is not None
                and current.token.secret_version == credentials.version_id
                and is_vendable(current.token, now, self._policy)
            ):
                token = current.token
        self._memory.put(key, token)
        return self._vended(profile, token, UPSTREAM)

    def _exchange(self, profile: Profile, deadline: float) -> tuple[CachedToken, Credentials]:
        """One exchange with the current credentials, retried once if they were just rotated."""
        credentials = self._read_secret(profile, force=True)
        try:
            return self._exchange_with(profile, credentials, deadline), credentials
        except UpstreamAuthFailed:
            latest = self._read_secret(profile, force=True)
            if latest.version_id == credentials.version_id:
                raise
            return self._exchange_with(profile, latest, deadline), latest

    def _exchange_with(
        self, profile: Profile, credentials: Credentials, deadline: float
    ) -> CachedToken:
        url = token_url_for(profile, credentials.workspace)
        if deadline - self._mono() < MIN_EXCHANGE_SECONDS:
            raise UpstreamUnavailable("too little time left to call Igni", retry_after=1)
        issued_at = self._wall()
        issued = self._igni.exchange(
            url,
            credentials.client_id,
            credentials.client_secret,
            deadline=deadline,
            scope=profile.scope,
            audience=profile.audience,
            auth_method=profile.token_endpoint_auth_method,
            on_attempt=lambda outcome, ms: self._telemetry.upstream_attempt(
                profile.name, outcome, ms
            ),
        )
        expires_at = effective_expiry(
            issued_at, issued.expires_in, issued.access_token, profile.default_expires_in
        )
        token = CachedToken(
            access_token=issued.access_token,
            token_type=issued.token_type,
            issued_at=issued_at,
            expires_at=expires_at,
            secret_version=credentials.version_id,
        )
        if not is_vendable(token, self._wall(), self._policy):
            raise UpstreamBadResponse("Igni issued a token that is already expired or about to")
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
        self._telemetry.refresh_failed(profile.name, exc.kind, exc.message, still_vending)
        try:
            self._table.record_failure(
                key,
                owner=self._owner,
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
            self._telemetry.store_unavailable(profile.name, str(store_exc))
        # When the fleet (this environment, if the table is away) will try Igni again.
        exc.retry_after = max(1, math.ceil(backoff))

    def _release_quietly(self, key: str) -> None:
        # If the table is unreachable the lease simply expires by itself.
        with contextlib.suppress(StoreUnavailable):
            self._table.release(key, owner=self._owner)

    # ------------------------------------------------------------- without the shared tier

    def _vend_direct(
        self,
        profile: Profile,
        key: str,
        *,
        deadline: float,
        min_ttl: int,
        reject: str | None = None,
    ) -> Vended:
        """DynamoDB is unreachable: serve memory, else exchange once per environment."""
        with self._local_lock(key):
            entry = self._memory.get(key)
            now = self._wall()
            if entry is not None:
                token = entry[0]
                if (
                    token.fingerprint != reject
                    and is_vendable(token, now, self._policy, min_ttl)
                    and self._version_current(profile, token)
                ):
                    return self._vended(profile, token, MEMORY)
            token, _ = self._exchange(
                profile, min(deadline, self._mono() + self._config.lease_seconds)
            )
            self._memory.put(key, token)
            return self._vended(profile, token, UPSTREAM)

    def _local_lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._local_locks.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------------- helpers

    def _version_current(self, profile: Profile, token: CachedToken) -> bool:
        """False once this environment knows a newer AWSCURRENT than the token's.

        A re-check, never a need: whatever Secrets Manager does (unreachable, throttled,
        AccessDenied, the secret deleted, KMS refusing), a vendable token stays vendable.
        """
        if self._recheck_paused(SECRETS):
            return True
        try:
            credentials = self._secrets.current(profile.secret_id, quick=True)
        except (SecretUnavailable, ConfigurationError) as exc:
            self._secret_recheck_failed(profile, exc)
            return True
        if token.secret_version is None or credentials.version_id == token.secret_version:
            return True
        # Version ids are not ordered: the token may be newer than our cached secret.
        last = self._secret_rechecked.get(profile.secret_id, -math.inf)
        if self._mono() - last < SECRET_RECHECK_SECONDS:
            return False
        self._secret_rechecked[profile.secret_id] = self._mono()
        try:
            credentials = self._secrets.current(profile.secret_id, force=True, quick=True)
        except (SecretUnavailable, ConfigurationError) as exc:
            self._secret_recheck_failed(profile, exc)
            return False
        return credentials.version_id == token.secret_version

    def _secret_recheck_failed(
        self, profile: Profile, exc: SecretUnavailable | ConfigurationError
    ) -> None:
        self._pause_recheck(SECRETS)
        reason = exc.message if isinstance(exc, ConfigurationError) else str(exc)
        self._telemetry.secret_unavailable(profile.name, reason)

    def _recheck_paused(self, which: str) -> bool:
        return self._mono() < self._recheck_paused_until.get(which, -math.inf)

    def _pause_recheck(self, which: str) -> None:
        self._recheck_paused_until[which] = self._mono() + self._config.recheck_pause_seconds

    def _current_version(self, profile: Profile) -> str | None:
        """AWSCURRENT's version while an invalid_client is remembered, re-read now and then.

        The remembered failure is about one version: a newer one must be tried at once, not
        after the failure's memory or the secret cache expires. The read is forced at most
        every SECRET_RECHECK_SECONDS; None (cannot tell) keeps the failure remembered.
        """
        last = self._secret_rechecked.get(profile.secret_id, -math.inf)
        force = self._mono() - last >= SECRET_RECHECK_SECONDS
        if force:
            self._secret_rechecked[profile.secret_id] = self._mono()
        try:
            return self._secrets.current(profile.secret_id, force=force, quick=True).version_id
        except (SecretUnavailable, ConfigurationError) as exc:
            self._secret_recheck_failed(profile, exc)
            return self._known_version(profile)

    def _known_version(self, profile: Profile) -> str | None:
        cached = self._secrets.cached(profile.secret_id)
        return cached.version_id if cached is not None else None

    def _read_secret(self, profile: Profile, *, force: bool) -> Credentials:
        try:
            return self._secrets.current(profile.secret_id, force=force)
        except SecretUnavailable as exc:
            self._telemetry.secret_unavailable(profile.name, str(exc))
            # The last credentials this environment read beat no token at all; if they were
            # rotated away meanwhile, Igni says invalid_client and that is reported as such.
            known = self._secrets.cached(profile.secret_id)
            if known is not None:
                return known
            raise UpstreamUnavailable(
                "Secrets Manager is unreachable and no valid token is cached", retry_after=2
            ) from None

    def _lease_window(self, deadline: float) -> float:
        remaining = deadline - self._mono()
        if remaining < MIN_EXCHANGE_SECONDS + 0.5:
            raise UpstreamUnavailable("too little time left to refresh the token", retry_after=1)
        return min(self._config.lease_seconds, remaining)

    def _check_min_ttl(self, token: CachedToken, min_ttl: int) -> None:
        limit = max_min_ttl(token.lifetime, self._policy)
        if min_ttl > limit:
            raise InvalidRequest(
                f"min_ttl={min_ttl} exceeds what a fresh token can give ({limit} s)"
            )

    def _vended(self, profile: Profile, token: CachedToken, tier: str) -> Vended:
        self._telemetry.vended(profile.name, tier)
        return Vended(token=token, tier=tier)
