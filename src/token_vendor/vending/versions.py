"""Which version of a profile's secret is current, as far as this environment can tell fast.

A cached token records the secret version that minted it; a newer `AWSCURRENT` stops it being
vended. Finding that out is a re-check, never a need: whatever Secrets Manager does
(unreachable, hanging, throttled, AccessDenied, the secret deleted, KMS refusing), a vendable
token stays vendable, the failure is logged and counted, and the re-check pauses for a while so
that one hanging endpoint costs one caller about a second. Only an exchange needs the secret.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from token_vendor.config import Profile
from token_vendor.errors import ConfigurationError, SecretUnavailable, UpstreamUnavailable
from token_vendor.models import CachedToken, Credentials
from token_vendor.observability import Telemetry

if TYPE_CHECKING:
    # Types only: the policy imports no AWS or HTTP SDK; the adapters are passed in.
    from token_vendor.aws.secret_store import SecretStore

# A forced re-read of the secret (to learn whether a version is newer) at most this often.
SECRET_RECHECK_SECONDS = 5.0


class RecheckPause:
    """Skips a re-check for `seconds` after it failed."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._until = -math.inf

    def active(self) -> bool:
        return self._clock() < self._until

    def start(self) -> None:
        self._until = self._clock() + self._seconds


class SecretVersions:
    """Reads the credentials an exchange needs, and answers version questions from cache."""

    def __init__(
        self,
        secrets: SecretStore,
        telemetry: Telemetry,
        *,
        pause_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secrets = secrets
        self._telemetry = telemetry
        self._mono = monotonic
        self._pause = RecheckPause(pause_seconds, monotonic)
        self._rechecked: dict[str, float] = {}

    def is_current(self, profile: Profile, token: CachedToken) -> bool:
        """False once this environment knows a newer AWSCURRENT than the token's."""
        if self._pause.active():
            return True
        try:
            credentials = self._secrets.current(profile.secret_id, quick=True)
        except (SecretUnavailable, ConfigurationError) as exc:
            self._recheck_failed(profile, exc)
            return True
        if token.secret_version is None or credentials.version_id == token.secret_version:
            return True
        # Version ids are not ordered: the token may be newer than our cached secret.
        if not self._may_force(profile):
            return False
        try:
            credentials = self._secrets.current(profile.secret_id, force=True, quick=True)
        except (SecretUnavailable, ConfigurationError) as exc:
            self._recheck_failed(profile, exc)
            return False
        return credentials.version_id == token.secret_version

    def current_version(self, profile: Profile) -> str | None:
        """AWSCURRENT's version while an invalid_client is remembered, re-read now and then.

        The remembered failure is about one version: a newer one must be tried at once, not
        after the failure's memory or the secret cache expires. The read is forced at most
        every SECRET_RECHECK_SECONDS; None (cannot tell) keeps the failure remembered.
        """
        if self._pause.active():
            return self.known_version(profile)
        try:
            return self._secrets.current(
                profile.secret_id, force=self._may_force(profile), quick=True
            ).version_id
        except (SecretUnavailable, ConfigurationError) as exc:
            self._recheck_failed(profile, exc)
            return self.known_version(profile)

    def known_version(self, profile: Profile) -> str | None:
        """The version this environment read last, without I/O."""
        cached = self._secrets.cached(profile.secret_id)
        return cached.version_id if cached is not None else None

    def latest(self, profile: Profile) -> Credentials:
        """AWSCURRENT read now, or the error: what a rotation event acts on."""
        return self._secrets.current(profile.secret_id, force=True)

    def read(self, profile: Profile, *, force: bool) -> Credentials:
        """The credentials for an exchange (full AWS budget); errors here are real errors."""
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

    def _may_force(self, profile: Profile) -> bool:
        last = self._rechecked.get(profile.secret_id, -math.inf)
        if self._mono() - last < SECRET_RECHECK_SECONDS:
            return False
        self._rechecked[profile.secret_id] = self._mono()
        return True

    def _recheck_failed(
        self, profile: Profile, exc: SecretUnavailable | ConfigurationError
    ) -> None:
        self._pause.start()
        reason = exc.message if isinstance(exc, ConfigurationError) else str(exc)
        self._telemetry.secret_unavailable(profile.name, reason)
