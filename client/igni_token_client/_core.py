"""What the sync and async clients share: the token, the errors, the endpoint and its transport
settings, SigV4 signing, reading the vendor's answers, and the cache's refresh policy.

Nothing here does I/O except signing (botocore's credential chain); the clients bring the HTTP
library and the locking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit
from urllib.request import (  # type: ignore[attr-defined]  # typeshed lacks the second
    getproxies_environment,
    proxy_bypass_environment,
)

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from urllib3.util import parse_url

from igni_token_client._hosts import is_loopback_host
from igni_token_client._redact import redact

__version__ = "0.2.0"

logger = logging.getLogger("igni_token_client.client")

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:3000"
DEFAULT_REGION: Final = "us-east-1"
SERVICE: Final = "execute-api"
ENDPOINT_VARIABLE: Final = "IGNI_TOKEN_ENDPOINT"
PROFILE_VARIABLE: Final = "IGNI_TOKEN_PROFILE"

# `make local` accepts these when its own environment has no AWS credentials
# (local/gateway/sigv4.py holds the same values). The client signs with them only for a loopback
# endpoint and only when the credential chain finds nothing, so that `make local` +
# `igni-token get` works on a fresh machine.
LOCAL_TEST_ACCESS_KEY_ID: Final = "AKIAIGNILOCALTESTKEY"
LOCAL_TEST_SECRET_ACCESS_KEY: Final = "IgniLocalTestSecretKeyNotAnAwsSecret0000"  # noqa: S105

MAX_RETRY_AFTER: Final = 300
# Longer socket timeouts overflow the platform's time_t in the middle of a request.
MAX_TIMEOUT: Final = 3600.0
# A public (regional or edge) or private API's default host name.
_EXECUTE_API_HOST = re.compile(
    r"^[a-z0-9-]+\.execute-api\.([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$"
)
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DIGITS = re.compile(r"^[0-9]+$")
_VSCHAR = re.compile(r"^[\x20-\x7e]+$")


class TokenVendorError(Exception):
    """The vendor (or API Gateway in front of it, or the network) did not give a token.

    ``status`` is the HTTP status (0 when no HTTP answer was had). ``error`` is the contract's code
    (``invalid_request``, ``access_denied``, ``not_found``, ``unknown_profile``,
    ``method_not_allowed``, ``refresh_rate_limited``, ``configuration_error``,
    ``upstream_auth_failed``, ``upstream_bad_response``, ``upstream_unavailable``) or one of the
    client's own: ``gateway_forbidden`` (API Gateway refused the signature or IAM denied the call),
    ``gateway_throttled``, ``gateway_error`` (any other answer without a contract code),
    ``bad_response`` (a 200 that is not a token), ``endpoint_unreachable`` and ``no_credentials``
    (none found, or the AWS configuration is wrong: an unknown profile, an expired SSO login).
    ``retry_after`` is the ``Retry-After`` header in seconds (at most 300), if any; while it runs,
    the client answers with this error again, without a request, counting it down.

    ``message`` is the server's or library's text with credentials and API Gateway's canonical
    request removed, on one line.
    """

    def __init__(self, status: int, error: str, message: str, retry_after: int | None = None):
        message = redact(message)
        super().__init__(f"{error} ({status}): {message}" if status else f"{error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Token:
    """The vendor's answer. ``expires_in`` is as answered; ``expires_at`` is epoch seconds."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: int
    expires_in: int

    @classmethod
    def from_json(cls, data: object) -> Token:
        if not isinstance(data, Mapping):
            raise TokenVendorError(200, "bad_response", "the answer is not a JSON object")
        access_token = data.get("access_token")
        token_type = data.get("token_type")
        if not isinstance(access_token, str) or not access_token:
            raise TokenVendorError(200, "bad_response", "the answer has no access_token")
        if not _VSCHAR.match(access_token):
            raise TokenVendorError(200, "bad_response", "the access_token is not printable ASCII")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenVendorError(200, "bad_response", "the answer's token_type is not Bearer")
        return cls(
            access_token,
            token_type,
            expires_at=_non_negative_int(data, "expires_at"),
            expires_in=_non_negative_int(data, "expires_in"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "expires_at": self.expires_at,
        }

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value: ``Bearer <token>``."""
        return f"Bearer {self.access_token}"

    def seconds_left(self, now: float | None = None) -> int:
        """Seconds until ``expires_at`` by this machine's wall clock."""
        return max(0, self.expires_at - int(time.time() if now is None else now))


# ---------------------------------------------------------------------------- the endpoint


def resolve_region(
    region: str | None = None,
    endpoint: str | None = None,
    session: botocore.session.Session | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The region to sign for: explicit, else the one in an ``execute-api`` endpoint's host name
    (public, ``API_ID.execute-api.REGION.amazonaws.com``, or private,
    ``API_ID-vpce-ID.execute-api.REGION.vpce.amazonaws.com``), else ``AWS_REGION``,
    ``AWS_DEFAULT_REGION``, the AWS profile's region, and ``us-east-1``."""
    if region:
        return region
    if endpoint:
        match = _EXECUTE_API_HOST.match((urlsplit(endpoint).hostname or "").lower())
        if match:
            return match.group(1)
    env = os.environ if environ is None else environ
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name):
            return env[name]
    if session is not None:
        try:
            configured = session.get_config_variable("region")
        except Exception:  # an unknown profile: signing will say so
            configured = None
        if isinstance(configured, str) and configured:
            return configured
    return DEFAULT_REGION


def is_loopback(endpoint: str) -> bool:
    return is_loopback_host(urlsplit(endpoint).hostname or "")


def endpoint_from(endpoint: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The argument, else ``IGNI_TOKEN_ENDPOINT``, else ``make local``'s address."""
    env = os.environ if environ is None else environ
    return endpoint or env.get(ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT


def profile_from(profile: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The argument (``""`` is the default profile), else ``IGNI_TOKEN_PROFILE``, else none."""
    if profile is not None:
        return profile or None
    env = os.environ if environ is None else environ
    return env.get(PROFILE_VARIABLE) or None


def check_endpoint(endpoint: str) -> str:
    """The endpoint without a trailing slash, or ValueError: an http(s) URL without user info,
    https unless the host is loopback, read the same by urllib's parser and urllib3's."""
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"endpoint must be an http(s) URL, got {redact(endpoint)!r}")
    try:
        sender_host = parse_url(endpoint).host
    except ValueError:
        sender_host = None
    if (sender_host or "").strip("[]").lower() != (parts.hostname or "") or "\\" in endpoint:
        raise ValueError(f"endpoint is not a plain URL: {redact(endpoint)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint must not carry a user name or password")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise ValueError(
            f"endpoint {redact(endpoint)!r} is plain http: use https (http is accepted only for a "
            "loopback host such as make local's 127.0.0.1)"
        )
    return endpoint.rstrip("/")


def proxy_for(endpoint: str) -> str | None:
    """The proxy botocore would use for this URL: ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case)
    by scheme, unless ``NO_PROXY`` names the host."""
    proxies = getproxies_environment()
    parts = urlsplit(endpoint)
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    try:
        if proxy_bypass_environment(parts.netloc, proxies):
            return None
    except (OSError, ValueError):
        pass
    if proxy.startswith("//"):
        return "http:" + proxy
    return proxy if "://" in proxy else "http://" + proxy


def ca_bundle_for(session: botocore.session.Session) -> str | None:
    """``AWS_CA_BUNDLE`` or the AWS profile's ``ca_bundle``, as botocore reads them."""
    value = session.get_config_variable("ca_bundle")
    return value if isinstance(value, str) and value else None


def skip_instance_metadata(session: botocore.session.Session) -> None:
    """For a loopback endpoint: instance metadata cannot hold credentials for it, and skipping it
    keeps a machine without credentials from probing the metadata address."""
    with contextlib.suppress(Exception):  # AWS_PROFILE names no profile: signing will say so
        session.get_component("credential_provider").remove("iam-role")


def check_timeout(timeout: float | None) -> None:
    """ValueError unless ``timeout`` is None or a finite number of seconds in (0, 3600]."""
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise ValueError(
            f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}, "
            f"got {timeout!r}"
        )


def token_path(profile: str | None, *suffix: str) -> str:
    parts = ["token"]
    if profile:
        parts.append(quote(profile, safe=""))
    parts.extend(suffix)
    return "/" + "/".join(parts)


# ---------------------------------------------------------------------------- signing


class Signer:
    """SigV4 (service ``execute-api``) with the session's credentials, resolved once."""

    def __init__(
        self, session: botocore.session.Session, region: str, endpoint: str, loopback: bool
    ) -> None:
        self.session = session
        self.region = region
        self.endpoint = endpoint
        self.loopback = loopback
        self.using_local_test_credentials = False
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None

    def headers(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        """The headers to send: Accept, Content-Type for a body, the signature, User-Agent."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
        try:
            frozen = self._credentials_now().get_frozen_credentials()
            SigV4Auth(frozen, SERVICE, self.region).add_auth(request)
        except TokenVendorError:
            raise
        except Exception as exc:  # botocore's: ProfileNotFound, an expired SSO token, ...
            raise TokenVendorError(0, "no_credentials", f"AWS credentials: {exc}") from None
        send = dict(request.prepare().headers.items())
        send["User-Agent"] = f"igni-token-client/{__version__}"
        return send

    def _credentials_now(self) -> Credentials:
        with self._lock:
            if self._credentials is None:
                found = self.session.get_credentials()
                if found is None and self.loopback:
                    logger.info(
                        "No AWS credentials found; signing for %s with the documented local test "
                        "credentials %s",
                        self.endpoint,
                        LOCAL_TEST_ACCESS_KEY_ID,
                    )
                    found = Credentials(
                        LOCAL_TEST_ACCESS_KEY_ID,
                        LOCAL_TEST_SECRET_ACCESS_KEY,
                        method="igni-local-test",
                    )
                    self.using_local_test_credentials = True
                if found is None:
                    raise TokenVendorError(
                        0,
                        "no_credentials",
                        "no AWS credentials found (environment, shared files, SSO, container or "
                        "instance role); the vendor needs SigV4-signed requests",
                    )
                self._credentials = found
            return self._credentials


# ---------------------------------------------------------------------------- answers


def token_or_error(status: int, headers: Mapping[str, str], data: bytes) -> Token:
    """The token in a 200, or the TokenVendorError that any other answer means."""
    payload = _json_or_none(data)
    if status == 200:
        return Token.from_json(payload)
    raise _error_from(status, payload, data, headers)


def _non_negative_int(data: Mapping[Any, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TokenVendorError(200, "bad_response", f"the answer's {name} is not a whole number")
    return value


def _json_or_none(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def retry_after_seconds(headers: Mapping[str, str]) -> int | None:
    """``Retry-After`` in whole seconds, at most 300: ASCII digits, or an HTTP-date (against the
    answer's own ``Date`` when it has one, so the local clock's error does not count)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip(" \t")
    if _DIGITS.match(value):
        return MAX_RETRY_AFTER if len(value) > 6 else min(MAX_RETRY_AFTER, int(value))
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(headers.get("Date") or "")
    delta = when - (reference if reference is not None else time.time())
    return max(0, min(MAX_RETRY_AFTER, math.ceil(delta)))


def _http_date(value: str) -> float | None:
    if not value or not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
        return when.timestamp() if when.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _error_from(
    status: int, payload: object, raw: bytes, headers: Mapping[str, str]
) -> TokenVendorError:
    retry_after = retry_after_seconds(headers)
    if isinstance(payload, Mapping):
        error = payload.get("error")
        message = payload.get("message")
        if isinstance(error, str) and _ERROR_CODE.match(error):
            text = message if isinstance(message, str) else ""
            return TokenVendorError(status, error, text, retry_after)
        gateway_message = message if isinstance(message, str) else payload.get("Message")
        if isinstance(gateway_message, str):
            return TokenVendorError(status, _gateway_code(status), gateway_message, retry_after)
    text = raw[:2000].decode("utf-8", "replace").strip() or f"HTTP {status} with no body"
    return TokenVendorError(status, _gateway_code(status), text, retry_after)


def _gateway_code(status: int) -> str:
    if status == 403:
        return "gateway_forbidden"
    if status == 429:
        return "gateway_throttled"
    return "gateway_error"


def is_unknown_token(exc: TokenVendorError) -> bool:
    """The vendor does not know the reported token: fall back to an ordinary GET."""
    return exc.status == 409 and exc.error == "unknown_token"


# ---------------------------------------------------------------------------- the cache policy


@dataclass(frozen=True)
class Cached:
    token: Token
    deadline: float  # on the client's clock: request start + expires_in
    refresh_at: float  # half the lifetime as received: from here, refresh early
    margin: float  # inside it, the token is no longer served


@dataclass(frozen=True)
class Fetch:
    """Make the request (this caller holds the single flight)."""


@dataclass(frozen=True)
class Wait:
    """Another caller's request is in flight: wait for it."""


FETCH: Final = Fetch()
WAIT: Final = Wait()
Step = Token | Fetch | Wait


class TokenState:
    """The cached token, the single flight and the remembered ``Retry-After``, without locking
    (the sync client holds a Condition around every call, the async one runs them in one loop).

    - Before half its lifetime the cached token is served as it is.
    - From half its lifetime, one caller refreshes while the others are served the cached token;
      if the refresh fails, the cached token is still served, and the next call tries again
      (botocore's advisory refresh does the same), unless a ``Retry-After`` runs.
    - Inside the margin (``min(300 s, 10 %)`` or ``refresh_margin``, capped at half the lifetime)
      the token is not served: callers wait for the request and share its token or its error.
    - After a 429 or 503 with ``Retry-After``, a call that would need a request raises the same
      error, counting down, until that time (``refresh_rate_limited`` holds back refreshes only).
    """

    def __init__(self, clock: Callable[[], float], refresh_margin: float | None) -> None:
        self.clock = clock
        self.refresh_margin = refresh_margin
        self.cached: Cached | None = None
        self.in_flight = False
        self.generation = 0
        self.failure: TokenVendorError | None = None
        self.failure_generation = -1
        self.blocked: dict[str, tuple[float, TokenVendorError]] = {}

    def margin(self, expires_in: int) -> float:
        if self.refresh_margin is None:
            return min(300.0, 0.1 * expires_in)
        return min(self.refresh_margin, 0.5 * expires_in)

    def usable(self, now: float, min_ttl: int | None) -> Token | None:
        cached = self.cached
        if cached is None:
            return None
        left = cached.deadline - now
        if left <= cached.margin or (min_ttl is not None and left < min_ttl):
            return None
        return cached.token

    def blocked_error(self, now: float, refresh: bool) -> TokenVendorError | None:
        for scope in ("any", "refresh") if refresh else ("any",):
            until, error = self.blocked.get(scope, (-math.inf, None))
            if error is not None and now < until:
                return TokenVendorError(
                    error.status, error.error, error.message, max(1, math.ceil(until - now))
                )
        return None

    def plan_get(self, min_ttl: int | None) -> Step:
        now = self.clock()
        token = self.usable(now, min_ttl)
        cached = self.cached
        if token is not None and cached is not None:
            early = now >= cached.refresh_at
            if not early or self.in_flight or self.blocked_error(now, refresh=False) is not None:
                return token
            self.in_flight = True
            return FETCH
        return self._must_fetch(now, refresh=False)

    def plan_invalidate(self, rejected: str) -> Step:
        now = self.clock()
        cached = self.cached
        if cached is not None and cached.token.access_token == rejected:
            self.cached = None
        token = self.usable(now, None)
        if token is not None:
            return token
        return self._must_fetch(now, refresh=True)

    def _must_fetch(self, now: float, refresh: bool) -> Step:
        blocked = self.blocked_error(now, refresh)
        if blocked is not None:
            raise blocked
        if self.in_flight:
            return WAIT
        self.in_flight = True
        return FETCH

    def shared_failure(self, seen: int) -> TokenVendorError | None:
        """The error of the request a waiter waited for (generation ``seen``), if it failed."""
        if self.failure is not None and self.failure_generation == seen + 1:
            return self.failure
        return None

    def succeeded(self, token: Token, started: float) -> None:
        margin = self.margin(token.expires_in)
        previous = self.cached
        if previous is not None and previous.token.access_token == token.access_token:
            # The same token again, with less time left: its margin is still that of the
            # lifetime it was first received with, not 10 % of what is left.
            margin = max(margin, previous.margin)
        self.cached = Cached(
            token, started + token.expires_in, started + token.expires_in / 2, margin
        )
        self._finish(None)

    def failed(self, exc: TokenVendorError, refresh: bool) -> None:
        now = self.clock()
        wait = exc.retry_after or 0
        if exc.status in {429, 503} and wait > 0:
            scope = "refresh" if refresh and exc.error == "refresh_rate_limited" else "any"
            self.blocked[scope] = (now + wait, exc)
        self._finish(exc)

    def abandoned(self) -> None:
        """The request ended without an answer (cancelled, interrupted): let the next one try."""
        self._finish(None)

    def _finish(self, failure: TokenVendorError | None) -> None:
        self.in_flight = False
        self.generation += 1
        self.failure = failure
        self.failure_generation = self.generation

    def fallback(self, exc: TokenVendorError, min_ttl: int | None) -> Token | None:
        """After a failed request: the cached token if it may still be served, else None."""
        token = self.usable(self.clock(), min_ttl)
        if token is not None:
            cached = self.cached
            left = 0 if cached is None else int(cached.deadline - self.clock())
            logger.warning(
                "The token vendor did not refresh the token; serving the cached one (%d s left): "
                "%s",
                left,
                exc,
            )
        return token
