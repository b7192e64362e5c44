"""Structured logs and EMF metrics. Nothing here ever receives a token or a secret.

Every entry point is decorated with `metrics.log_metrics(capture_cold_start_metric=True)`:
Powertools flushes once per invocation and counts cold starts. The vending events keep their
own dimension sets (profile with tier or kind, which the alarms and dashboard query), and
Powertools' `Metrics` serializes one dimension set per blob, so each is a `single_metric`, as
Powertools documents for metrics with dimensions of their own.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

SERVICE = "igni-token-vendor"
NAMESPACE = "IgniTokenVendor"

# The template names each function's service (igni-token-vendor, igni-token-rotation) and the
# stack's namespace; these defaults serve a direct import.
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE)


class Telemetry:
    """What the vending logic reports: one method per event worth a log line or a metric."""

    def __init__(self, log: Logger = logger, namespace: str | None = None) -> None:
        self._log = log
        # Per stack (the template sets it), so two stacks' alarms do not see each other's data.
        self._namespace = namespace or os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE

    def _count(self, name: str, profile: str, **dimensions: str) -> None:
        self._count_only(name, profile=profile, **dimensions)

    def _count_only(self, name: str, **dimensions: str) -> None:
        with single_metric(
            name=name, unit=MetricUnit.Count, value=1, namespace=self._namespace
        ) as metric:
            for key, value in dimensions.items():
                metric.add_dimension(name=key, value=value)

    def vended(self, profile: str, tier: str) -> None:
        self._count("TokensVended", profile, tier=tier)

    def upstream_attempt(self, profile: str, outcome: str, latency_ms: float) -> None:
        self._log.info(
            "igni token request",
            extra={
                "profile": profile,
                "outcome": outcome,
                "upstream_latency_ms": round(latency_ms, 1),
            },
        )
        self._count("UpstreamCalls", profile)
        if outcome != "ok":
            self._count("UpstreamErrors", profile, kind=outcome)

    def refresh_failed(self, profile: str, kind: str, message: str, still_vending: bool) -> None:
        self._log.warning(
            "token refresh failed",
            extra={
                "profile": profile,
                "kind": kind,
                "reason": message,
                "still_vending": still_vending,
            },
        )
        self._count("RefreshFailures", profile, kind=kind)
        if still_vending:
            self._count("RefreshFailuresWhileValid", profile)

    def exchange_crashed(self, profile: str) -> None:
        """An exchange failed with an error nobody foresaw: the stack trace, for the log only."""
        self._log.exception("token exchange failed unexpectedly", extra={"profile": profile})
        self._count("RefreshFailures", profile, kind="unexpected")

    def auth_failed(self, profile: str, secret_version: str) -> None:
        self._log.error(
            "igni rejected the client credentials",
            extra={"profile": profile, "secret_version": secret_version},
        )
        self._count("UpstreamAuthFailures", profile)

    def store_unavailable(self, profile: str, reason: str) -> None:
        self._log.error("token table unavailable", extra={"profile": profile, "reason": reason})
        self._count("StoreUnavailable", profile)

    def secret_unavailable(self, profile: str, reason: str) -> None:
        self._log.warning(
            "secrets manager unavailable", extra={"profile": profile, "reason": reason}
        )
        self._count("SecretUnavailable", profile)

    def undecryptable(self, profile: str) -> None:
        self._log.warning(
            "cached token could not be decrypted; treated as a miss", extra={"profile": profile}
        )
        self._count("UndecryptableTokens", profile)

    def lease_lost(self, profile: str) -> None:
        self._log.warning(
            "refresh lease lost before commit; newer token kept", extra={"profile": profile}
        )
        self._count("LeaseLost", profile)

    def rotation(self, profile: str, version: str, purged: bool) -> None:
        self._log.info(
            "secret rotation seen",
            extra={"profile": profile, "secret_version": version, "purged": purged},
        )

    def rotation_completed(self) -> None:
        self._count_only("RotationsCompleted")

    def rotation_step_failed(self, step: str) -> None:
        self._count_only("RotationStepFailures", step=step)

    def rotation_exchange_failed(self, profile: str, version: str, code: str, message: str) -> None:
        self._log.error(
            "exchange with rotated credentials failed",
            extra={"profile": profile, "secret_version": version, "error": code, "reason": message},
        )
        self._count("RotationExchangeFailures", profile)
