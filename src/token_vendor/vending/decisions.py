"""What one view of a credential set's shared item allows: serve its token, refresh it (taking
the lease), or refuse: a report of a token this service did not vend, the forced-refresh rate
limit, and the failures the fleet remembers (the shared backoff, a rejected secret version)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from token_vendor.config import CLIENT_SECRET_POST, Config, Profile
from token_vendor.errors import (
    BACKOFF_ERRORS,
    InvalidRequest,
    RefreshRateLimited,
    UnknownToken,
    UpstreamAuthFailed,
    UpstreamUnavailable,
)
from token_vendor.models import CachedToken, Record
from token_vendor.observability import Telemetry
from token_vendor.vending.answers import seconds_until
from token_vendor.vending.freshness import is_fresh, is_vendable, max_min_ttl
from token_vendor.vending.lease import Serve, Take

if TYPE_CHECKING:
    from token_vendor.vending.versions import SecretVersions


def not_vended_here(profile: Profile) -> str:
    return (
        f"the reported token is not one this service vended for profile '{profile.name}' (or "
        "it was replaced too long ago): get the current token with GET instead"
    )


def forced_too_soon(
    profile: Profile, interval: int, allowed_at: float, now: float
) -> RefreshRateLimited:
    """The refusal of a forced refresh within FORCED_REFRESH_INTERVAL_SECONDS of the last one
    (the item's fence for the fleet, or an environment's own while the table is away)."""
    return RefreshRateLimited(
        f"a forced refresh of profile '{profile.name}' happened less than {interval} s ago "
        "and Igni still rejects its token",
        retry_after=seconds_until(allowed_at, now),
    )


class Decisions:
    """The vending policy applied to one view of the item (the lease re-reads and re-asks)."""

    def __init__(self, config: Config, versions: SecretVersions, telemetry: Telemetry) -> None:
        self._config = config
        self._policy = config.freshness
        self._versions = versions
        self._telemetry = telemetry

    def decide(
        self,
        profile: Profile,
        record: Record | None,
        now: float,
        *,
        min_ttl: int,
        rejected: str | None,
    ) -> Serve | Take:
        """What one view of the item allows: serve a token, or refresh (taking the lease)."""
        if rejected is not None and (record is None or not record.vended(rejected)):
            raise UnknownToken(not_vended_here(profile))
        if rejected is not None and record is not None and record.token_fingerprint == rejected:
            interval = self._config.forced_refresh_interval_seconds
            # A report while that refresh is still under way waits for it (coalesced): the
            # reported token stays in the item until the replacement commits.
            if record.forced_at > now - interval and not record.lease_held(now):
                raise forced_too_soon(profile, interval, record.forced_at + interval, now)
            return Take(seen=rejected, forced_floor=now - interval)
        token = record.token if record is not None else None
        if record is not None and record.undecryptable:
            self._telemetry.undecryptable(profile.name)
        if token is not None and not self._versions.is_current(profile, token):
            token = None
        if token is not None:
            self.check_min_ttl(token, min_ttl)
        vendable = token is not None and is_vendable(token, now, self._policy, min_ttl)
        if token is not None and vendable and is_fresh(token, now, self._policy):
            return Serve(token)
        stale = token if vendable else None
        if record is None:
            return Take(seen=None)
        held_back = self._held_back(profile, record, now, serving=stale is not None)
        if held_back and stale is not None:
            return Serve(stale, fresh=False)
        return Take(seen=record.token_fingerprint, stale=stale)

    def _held_back(self, profile: Profile, record: Record, now: float, *, serving: bool) -> bool:
        """True while refreshes are held back and a token serves; raise if none does."""
        if record.auth_failed_until > now:
            version = self._versions.current_version(profile)
            if version is None or version == record.auth_failed_version:
                if serving:
                    return True
                # The shared item keeps the code, not the message: the method is named as a
                # possible cause wherever it could be one (the form, Igni's documented way).
                method = (
                    " (or, if Igni asked for HTTP Basic, set client_secret_basic)"
                    if profile.token_endpoint_auth_method == CLIENT_SECRET_POST
                    else ""
                )
                # Until every remembered failure has lapsed: a caller who waits this long is
                # not refused by this item again.
                raise UpstreamAuthFailed(
                    "Igni rejected the client credentials (invalid_client) moments ago; "
                    f"fix the secret{method} and retry",
                    retry_after=seconds_until(
                        max(record.auth_failed_until, record.backoff_until), now
                    ),
                )
            # Igni refused an older version: the backoff it set is not about this one.
            return False
        if record.backoff_until > now:
            if serving:
                return True
            # The same status and code as the failure that started the backoff, and the time
            # until the fleet tries again: a caller waiting that long is not refused for it.
            error = BACKOFF_ERRORS.get(record.failure_code or "", UpstreamUnavailable)
            raise error(
                f"refreshing the token failed {record.failures} time(s) in a row "
                f"({record.failure_code or UpstreamUnavailable.code}); backing off",
                retry_after=seconds_until(record.backoff_until, now),
            )
        return False

    def check_min_ttl(self, token: CachedToken, min_ttl: int) -> None:
        limit = max_min_ttl(token.lifetime, self._policy)
        if min_ttl > limit:
            raise InvalidRequest(
                f"min_ttl={min_ttl} exceeds what a fresh token can give ({limit} s)"
            )
