"""Domain errors, each carrying the HTTP status and error code of the public contract."""

from __future__ import annotations


class VendorError(Exception):
    """Base of every error the API answers with a JSON `{"error", "message"}` body."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, retry_after: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        # For the log line of the same request only, never the answer: names of resources
        # (a secret's ARN or name, a table) tell an attacker what to aim at.
        self.detail = detail
        # A finer label than `code` for metrics, e.g. "timeout" or "throttled".
        self.kind = self.code


class InvalidRequest(VendorError):
    status = 400
    code = "invalid_request"


class AccessDenied(VendorError):
    status = 403
    code = "access_denied"


class UnknownProfile(VendorError):
    status = 404
    code = "unknown_profile"


class UnknownToken(VendorError):
    """A forced refresh reported a token this service did not vend for that profile: a refresh
    is a proof of possession, not a second way to read the token."""

    status = 409
    code = "unknown_token"


class RefreshRateLimited(VendorError):
    status = 429
    code = "refresh_rate_limited"


class ConfigurationError(VendorError):
    status = 500
    code = "configuration_error"


class UpstreamAuthFailed(VendorError):
    status = 502
    code = "upstream_auth_failed"


class UpstreamBadResponse(VendorError):
    status = 502
    code = "upstream_bad_response"


class UpstreamUnavailable(VendorError):
    status = 503
    code = "upstream_unavailable"


# What a failure recorded in the shared item answers while the fleet backs off: the same
# status and code as the failure itself, so an error does not change kind on the next call.
BACKOFF_ERRORS: dict[str, type[VendorError]] = {
    cls.code: cls
    for cls in (ConfigurationError, UpstreamAuthFailed, UpstreamBadResponse, UpstreamUnavailable)
}


class SecretUnavailable(Exception):
    """Secrets Manager could not be reached; a cached token may still be vended."""


class StoreUnavailable(Exception):
    """DynamoDB (or KMS behind it) could not be reached; fall back to memory or a direct call."""
