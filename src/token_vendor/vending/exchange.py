"""One exchange of a profile's current credentials for a token, as the cache will hold it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from token_vendor.config import Freshness, Profile
from token_vendor.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
    VendorError,
)
from token_vendor.igni.token_url import token_url_for
from token_vendor.models import CachedToken, Credentials
from token_vendor.observability import Telemetry
from token_vendor.vending.freshness import effective_expiry, is_vendable
from token_vendor.vending.versions import SecretVersions

if TYPE_CHECKING:
    # Types only: the policy imports no AWS or HTTP SDK; the adapters are passed in.
    from token_vendor.igni.client import IgniClient

# Smallest time worth calling Igni with; below it, answer 503 instead.
MIN_EXCHANGE_SECONDS = 1.0


class Exchange:
    """Reads the secret afresh and calls Igni; a just-rotated secret gets one more try."""

    def __init__(
        self,
        versions: SecretVersions,
        igni: IgniClient,
        telemetry: Telemetry,
        policy: Freshness,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._versions = versions
        self._igni = igni
        self._telemetry = telemetry
        self._policy = policy
        self._wall = wall
        self._mono = monotonic

    def __call__(self, profile: Profile, deadline: float) -> tuple[CachedToken, Credentials]:
        """A new token and the credentials that minted it; `deadline` is monotonic."""
        credentials = self._versions.read(profile, force=True)
        try:
            return self._with(profile, credentials, deadline), credentials
        except UpstreamAuthFailed:
            latest = self._versions.read(profile, force=True)
            if latest.version_id == credentials.version_id:
                raise
            return self._with(profile, latest, deadline), latest

    def _with(self, profile: Profile, credentials: Credentials, deadline: float) -> CachedToken:
        url = token_url_for(profile, credentials.workspace)
        if deadline - self._mono() < MIN_EXCHANGE_SECONDS:
            raise UpstreamUnavailable("too little time left to call Igni", retry_after=1)
        try:
            return self._exchange_at(profile, credentials, url, deadline)
        except VendorError:
            raise
        except Exception:
            # Whatever an upstream answer (or a library reading it) does that nobody foresaw:
            # logged with its trace, answered 502, and the fleet backs off as for any failure.
            self._telemetry.exchange_crashed(profile.name)
            raise UpstreamBadResponse("Igni's answer could not be processed") from None

    def _exchange_at(
        self, profile: Profile, credentials: Credentials, url: str, deadline: float
    ) -> CachedToken:
        issued_at = self._wall()
        issued = self._igni.exchange_for(
            profile,
            url,
            credentials,
            deadline=deadline,
            on_attempt=lambda outcome, ms: self._telemetry.upstream_attempt(
                profile.name, outcome, ms
            ),
        )
        token = CachedToken(
            access_token=issued.access_token,
            token_type=issued.token_type,
            issued_at=issued_at,
            expires_at=effective_expiry(
                issued_at, issued.expires_in, issued.access_token, profile.default_expires_in
            ),
            secret_version=credentials.version_id,
        )
        if not is_vendable(token, self._wall(), self._policy):
            raise UpstreamBadResponse("Igni issued a token that is already expired or about to")
        return token
