"""The Igni OAuth2 client-credentials exchange over urllib3, with a deadline-aware retry loop.

urllib3's own `Retry` does not retry POST by default and knows nothing of the Lambda deadline,
so each attempt is made with `retries=False` and an explicit `Timeout`, and this loop decides
whether another attempt (after capped, jittered backoff or the server's `Retry-After`) still
fits in the time left.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import quote_plus, urlencode

import urllib3

from token_vendor.config import (
    AUTH_METHODS,
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    DEFAULT_REFRESH_BACKOFF_MAX_SECONDS,
    MAX_EXPIRES_IN,
    Profile,
    token_url_problem,
)
from token_vendor.errors import (
    ConfigurationError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamUnavailable,
)
from token_vendor.secret_store import Credentials

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Below this much time left an attempt cannot succeed; give up instead of starting one.
MIN_ATTEMPT_SECONDS = 0.25
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
# The most of an upstream error text kept for the log line (never for an answer body).
MAX_UPSTREAM_TEXT = 200

AttemptObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class IssuedToken:
    """What Igni answered: the token and the lifetime it announced, None when it announced
    none (freshness.effective_expiry then takes the JWT's exp or the configured default)."""

    access_token: str
    token_type: str
    expires_in: int | None


class IgniClient:
    """Exchanges client credentials for an access token at an Igni token URL."""

    def __init__(
        self,
        http: urllib3.PoolManager,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 2.0,
        retry_after_max: float = DEFAULT_REFRESH_BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        self._http = http
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        # A server's Retry-After is believed up to this long (the fleet's backoff cap).
        self._retry_after_max = retry_after_max
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._jitter = jitter
        self._on_attempt = on_attempt

    def exchange_for(
        self,
        profile: Profile,
        token_url: str,
        credentials: Credentials,
        *,
        deadline: float,
        on_attempt: AttemptObserver | None = None,
    ) -> IssuedToken:
        """Exchange one version of a profile's credentials the way the profile asks: its
        scope, audience and client authentication (the vendor and the rotation function)."""
        return self.exchange(
            token_url,
            credentials.client_id,
            credentials.client_secret,
            deadline=deadline,
            scope=profile.scope,
            audience=profile.audience,
            resource=profile.resource,
            auth_method=profile.token_endpoint_auth_method,
            on_attempt=on_attempt,
        )

    def exchange(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        deadline: float,
        scope: str | None = None,
        audience: str | None = None,
        resource: tuple[str, ...] = (),
        auth_method: str = CLIENT_SECRET_POST,
        on_attempt: AttemptObserver | None = None,
    ) -> IssuedToken:
        """POST the client-credentials grant; `deadline` is on this client's clock.

        The client authenticates with `auth_method`: client_secret_post puts the id and secret
        in the form, client_secret_basic in the Authorization header (and not in the form).
        """
        # Checked again where it is sent (config checks it first): the credentials go only
        # where urllib3 itself reads the URL to point, and nowhere if that is not allowed.
        problem = token_url_problem(token_url)
        if problem is not None:
            raise ConfigurationError(f"the Igni token URL {problem}; nothing was sent")
        observe = on_attempt or self._on_attempt
        body, headers = _token_request(
            client_id,
            client_secret,
            scope=scope,
            audience=audience,
            resource=resource,
            auth_method=auth_method,
        )
        last_error = UpstreamUnavailable("Igni could not be reached before the deadline")
        for attempt in range(1, self._max_attempts + 1):
            remaining = deadline - self._clock()
            if remaining < MIN_ATTEMPT_SECONDS:
                break
            started = self._clock()
            try:
                response = self._http.request(
                    "POST",
                    token_url,
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(
                        connect=min(self._connect_timeout, remaining),
                        read=min(self._read_timeout, remaining),
                        total=remaining,
                    ),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                )
                try:
                    payload = self._read_body(response, deadline, token_url)
                finally:
                    response.release_conn()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # NewConnectionError subclasses ConnectTimeoutError in urllib3: test it first.
                timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                    exc, urllib3.exceptions.NewConnectionError
                )
                kind = "timeout" if timed_out else "connection"
                self._observe(observe, kind, started)
                last_error = UpstreamUnavailable(
                    f"Igni could not be reached ({kind}: {type(exc).__name__})"
                )
                last_error.kind = kind
                retry_after = None
            else:
                status = response.status
                if 200 <= status < 300:
                    self._observe(observe, "ok", started)
                    return _parse_token(payload)
                if status not in RETRYABLE_STATUSES:
                    self._observe(observe, "auth" if status == 401 else "rejected", started)
                    raise _rejection(
                        status,
                        payload,
                        auth_method=auth_method,
                        basic_wanted=auth_method != CLIENT_SECRET_BASIC
                        and _basic_challenge(response.headers.get("WWW-Authenticate")),
                    )
                kind = "throttled" if status == 429 else "server_error"
                self._observe(observe, kind, started)
                retry_after = retry_after_seconds(
                    response.headers.get("Retry-After"), now=self._wall(), cap=self._retry_after_max
                )
                last_error = UpstreamUnavailable(
                    f"Igni answered HTTP {status}", retry_after=_ceil(retry_after)
                )
                last_error.kind = kind
            if attempt == self._max_attempts:
                break
            delay = self._backoff(attempt, retry_after)
            if self._clock() + delay + MIN_ATTEMPT_SECONDS > deadline:
                break
            self._sleep(delay)
        if last_error.retry_after is None:
            last_error.retry_after = max(1, _ceil(self._backoff_max) or 1)
        raise last_error

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float, url: str) -> bytes:
        """At most MAX_BODY_BYTES + 1 bytes, and never past the deadline.

        The read timeout bounds each socket read, not the body: a server dripping a byte now and
        then would hold a plain read() for as long as it likes. read1() returns what one read
        gives, so the deadline is checked between them.
        """
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            if self._clock() >= deadline:
                raise urllib3.exceptions.ReadTimeoutError(None, url, "body past the deadline")  # type: ignore[arg-type]
            chunk = response.read1(MAX_BODY_BYTES + 1 - size, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        capped = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        # Full jitter spreads the retries of many environments hitting the same outage.
        delay: float = capped * self._jitter()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _observe(self, observe: AttemptObserver | None, outcome: str, started: float) -> None:
        if observe is not None:
            observe(outcome, (self._clock() - started) * 1000.0)


def _parse_token(payload: bytes) -> IssuedToken:
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


def _token_request(
    client_id: str,
    client_secret: str,
    *,
    scope: str | None,
    audience: str | None,
    resource: tuple[str, ...],
    auth_method: str,
) -> tuple[str, dict[str, str]]:
    """The form body and headers of a client-credentials request; each RFC 8707 resource is a
    `resource` field of its own."""
    form: list[tuple[str, str]] = [("grant_type", "client_credentials")]
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    if auth_method == CLIENT_SECRET_BASIC:
        headers["Authorization"] = basic_authorization(client_id, client_secret)
    else:
        form += [("client_id", client_id), ("client_secret", client_secret)]
    if scope:
        form.append(("scope", scope))
    if audience:
        form.append(("audience", audience))
    form += [("resource", uri) for uri in resource]
    return urlencode(form), headers


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The Authorization header of client_secret_basic (RFC 6749 section 2.3.1): the id and the
    secret each form-urlencoded (UTF-8), joined by ':', then base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


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


def _basic_challenge(value: str | None) -> bool:
    # Only the scheme is looked at, and never repeated: the realm is the server's free text.
    return bool(value) and _BASIC_CHALLENGE.search(value or "") is not None


def _rejection(
    status: int,
    payload: bytes,
    *,
    auth_method: str = CLIENT_SECRET_POST,
    basic_wanted: bool = False,
) -> UpstreamAuthFailed | UpstreamBadResponse:
    code, text = _error_fields(payload)
    # The server's own words go to this request's log line only (VendorError.detail).
    detail = f"Igni said: {text}" if text else None
    if status == 401 or code == "invalid_client":
        wanted = _methods_named(text) if text else set()
        if wanted and auth_method not in wanted:
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


def _methods_named(text: str) -> set[str]:
    """The client authentication methods (of those this client speaks) a server's text names."""
    return {method for method in AUTH_METHODS if method in text}


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


def _ceil(value: float | None) -> int | None:
    return None if value is None else max(1, math.ceil(value))
