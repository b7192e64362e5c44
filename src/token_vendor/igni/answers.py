"""What Igni answered, read strictly: the token (printable ASCII, at most 64 KiB), its announced
lifetime, a `Retry-After`, and a refusal's code and description (sanitized, for the log line).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC

from token_vendor.config import (
    AUTH_METHODS,
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    MAX_EXPIRES_IN,
)
from token_vendor.errors import UpstreamAuthFailed, UpstreamBadResponse

# The largest token cached and vended (envelope encryption has no smaller limit; a DynamoDB
# item holds 400 KB), and the largest answer read: a token plus room for the other fields.
MAX_TOKEN_BYTES = 64 * 1024
MAX_BODY_BYTES = MAX_TOKEN_BYTES + 16 * 1024
# expires_in as a string (several providers send "172800"): ASCII digits only, no sign, space,
# exponent or other script's digits (str.isdigit accepts those), and short enough that int()
# never meets Python's limit on digit strings; 20 digits leave room for leading zeros.
_DIGITS = re.compile(r"[0-9]{1,20}")
# A Basic challenge anywhere in WWW-Authenticate (it may list several schemes).
_BASIC_CHALLENGE = re.compile(r"(?:^|,)\s*basic(?:\s|,|$)", re.IGNORECASE)
# RFC 6749 A.12: an access token (and its type) is 1*VSCHAR, printable ASCII. Anything else would
# be put by callers into an Authorization header (CR/LF: header injection) or fail to encode.
_VSCHARS = re.compile(r"[\x20-\x7e]+")
# RFC 9110 10.2.3 delay-seconds: 1*DIGIT, ASCII only (str.isdigit also takes '²' and '٣').
_DELAY_SECONDS = re.compile(r"[0-9]+")
# More digits than this is longer than any cap anyway (and int() of it is never needed).
_MAX_DELAY_DIGITS = 10
# A refusal that only makes sense for a form-authenticated client: "missing client_id",
# "client_secret is required" (a Basic request carries neither in the form).
_FORM_ONLY = re.compile(
    r"(missing|required|no)\b.{0,40}\bclient_(id|secret)|client_(id|secret)\b.{0,40}\b"
    r"(missing|required|not provided|not present)",
    re.IGNORECASE,
)
# The most of an upstream error text kept for the log line (never for an answer body).
MAX_UPSTREAM_TEXT = 200


@dataclass(frozen=True)
class IssuedToken:
    """What Igni answered: the token and the lifetime it announced, None when it announced
    none (freshness.effective_expiry then takes the JWT's exp or the configured default)."""

    access_token: str
    token_type: str
    expires_in: int | None


def parse_token(payload: bytes) -> IssuedToken:
    """The token of a 2xx answer, or UpstreamBadResponse saying what is wrong with it."""
    if len(payload) > MAX_BODY_BYTES:
        raise UpstreamBadResponse("Igni answered with an oversized body")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise UpstreamBadResponse("Igni answered 2xx with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamBadResponse("Igni answered 2xx with JSON that is not an object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise UpstreamBadResponse("Igni answered 2xx without an access_token")
    if not _VSCHARS.fullmatch(token):
        raise UpstreamBadResponse(
            "Igni answered 2xx with an access_token that is not printable ASCII (RFC 6749 A.12)"
        )
    if len(token) > MAX_TOKEN_BYTES:
        raise UpstreamBadResponse(
            f"Igni issued a token of {len(token)} bytes; at most {MAX_TOKEN_BYTES} bytes are "
            "cached and vended"
        )
    expires_in = _lifetime(data.get("expires_in"))
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not _VSCHARS.fullmatch(token_type):
        raise UpstreamBadResponse(
            "Igni answered 2xx with a token_type that is not printable ASCII (RFC 6749 A.12)"
        )
    if token_type.lower() != "bearer":
        raise UpstreamBadResponse("Igni answered 2xx with a token_type other than Bearer")
    # The OAuth token type, not a password (ruff S106, bandit B106).
    return IssuedToken(access_token=token, token_type="Bearer", expires_in=expires_in)  # noqa: S106  # nosec B106


def _lifetime(value: object) -> int | None:
    """The token lifetime Igni announced, in whole seconds, or None when it announced none.

    A JSON integer, a finite float (floored) or a string of ASCII digits, then a positive
    number of at most MAX_EXPIRES_IN; anything else is a bad answer (502), never an overflow
    further on.
    """
    if value is None:
        return None
    seconds: int
    if isinstance(value, bool):
        raise UpstreamBadResponse("Igni answered 2xx with an expires_in that is not a number")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UpstreamBadResponse("Igni answered 2xx with an infinite or NaN expires_in")
        seconds = math.floor(value)
    elif isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise UpstreamBadResponse(
                "Igni answered 2xx with an expires_in string that is not up to 20 digits 0-9"
            )
        seconds = int(value)
    else:
        raise UpstreamBadResponse("Igni answered 2xx with an expires_in that is not a number")
    if not 0 < seconds <= MAX_EXPIRES_IN:
        raise UpstreamBadResponse(
            f"Igni answered 2xx with an expires_in outside 1..{MAX_EXPIRES_IN} seconds"
        )
    return seconds


def basic_challenge(value: str | None) -> bool:
    # Only the scheme is looked at, and never repeated: the realm is the server's free text.
    return bool(value) and _BASIC_CHALLENGE.search(value or "") is not None


def rejection(
    status: int,
    payload: bytes,
    *,
    auth_method: str = CLIENT_SECRET_POST,
    basic_wanted: bool = False,
) -> UpstreamAuthFailed | UpstreamBadResponse:
    code, text = _error_fields(payload)
    # The server's own words go to this request's log line only (VendorError.detail).
    detail = f"Igni said: {text}" if text else None
    wanted = _methods_wanted(text, auth_method) if text else set()
    misdirected = status in (400, 401) and bool(wanted) and auth_method not in wanted
    if status == 401 or code == "invalid_client" or misdirected:
        if misdirected:
            method = sorted(wanted)[0]
            message = (
                f"Igni refused client authentication with {auth_method} (invalid_client) and "
                f"names {' or '.join(sorted(wanted))} as what it accepts: set "
                f"IGNI_TOKEN_ENDPOINT_AUTH_METHOD={method} (or the profile's "
                "token_endpoint_auth_method)"
            )
        elif status == 401 and basic_wanted:
            message = (
                "Igni rejected the client credentials sent in the form (invalid_client, "
                "client_secret_post) and asks for HTTP Basic authentication: the server may "
                "want client_secret_basic "
                "(set IGNI_TOKEN_ENDPOINT_AUTH_METHOD or the profile's "
                "token_endpoint_auth_method), or client_id and client_secret are wrong"
            )
        else:
            message = (
                "Igni rejected the client credentials (invalid_client): check client_id and "
                "client_secret in the secret"
            )
        error = UpstreamAuthFailed(message, detail=detail)
        error.kind = "auth"
        return error
    shown = f" ({code})" if code else ""
    bad = UpstreamBadResponse(
        f"Igni refused the token request with HTTP {status}{shown}", detail=detail
    )
    bad.kind = "rejected"
    return bad


def _methods_wanted(text: str, auth_method: str) -> set[str]:
    """The client authentication methods (of those this client speaks) a server's text asks
    for: those it names, or the form's when it says a Basic request lacks client_id."""
    named = {method for method in AUTH_METHODS if method in text}
    if not named and auth_method == CLIENT_SECRET_BASIC and _FORM_ONLY.search(text):
        return {CLIENT_SECRET_POST}
    return named


def _error_fields(payload: bytes) -> tuple[str | None, str | None]:
    """The OAuth2 error code, if short and token-like, and the server's description, sanitized.

    The description is free text from upstream: only printable ASCII is kept, runs of anything
    else become one space, and it is cut to MAX_UPSTREAM_TEXT characters.
    """
    try:
        data = json.loads(payload[:MAX_BODY_BYTES])
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("error")
    if not (
        isinstance(code, str)
        and code.isascii()
        and code.replace("_", "").isalnum()
        and len(code) <= 64
    ):
        code = None
    text = next(
        (
            value
            for value in (data.get("error_description"), data.get("message"))
            if isinstance(value, str)
        ),
        None,
    )
    return code, sanitize(text) if text else None


def sanitize(text: str) -> str | None:
    """Printable ASCII only, whitespace and anything else folded, at most MAX_UPSTREAM_TEXT."""
    cleaned = " ".join(re.sub(r"[^\x21-\x7e]+", " ", text).split())[:MAX_UPSTREAM_TEXT]
    return cleaned or None


def retry_after_seconds(value: str | None, *, now: float, cap: float) -> float | None:
    """A server's Retry-After (RFC 9110 10.2.3) in seconds from `now`, at most `cap`.

    Only delay-seconds in ASCII digits or an HTTP-date count; anything else is ignored (None),
    and the caller's own backoff applies. A date in the past is 0.
    """
    if not value:
        return None
    value = value.strip(" \t")
    if _DELAY_SECONDS.fullmatch(value):
        if len(value) > _MAX_DELAY_DIGITS:
            return cap
        return min(float(int(value)), cap)
    if not value.isascii() or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return min(max(0.0, seconds), cap)
