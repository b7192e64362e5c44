"""TokenClient: Igni tokens from the token vendor, signed with the caller's AWS credentials."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote, urlencode, urlsplit

import botocore.session
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REGION",
    "LOCAL_TEST_ACCESS_KEY_ID",
    "LOCAL_TEST_SECRET_ACCESS_KEY",
    "Token",
    "TokenClient",
    "TokenVendorError",
    "resolve_region",
]

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:3000"
DEFAULT_REGION: Final = "us-east-1"
SERVICE: Final = "execute-api"

# `make local` accepts these when its own environment has no AWS credentials
# (local/gateway/sigv4.py holds the same values). The client signs with them only for a loopback
# endpoint and only when the credential chain finds nothing, so that `make local` +
# `igni-token get` works on a fresh machine.
LOCAL_TEST_ACCESS_KEY_ID: Final = "AKIAIGNILOCALTESTKEY"
LOCAL_TEST_SECRET_ACCESS_KEY: Final = "IgniLocalTestSecretKeyNotAnAwsSecret0000"  # noqa: S105

_DEFAULT_TIMEOUT: Final = urllib3.Timeout(connect=3.0, read=30.0)
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


class TokenVendorError(Exception):
    """The vendor (or API Gateway in front of it, or the network) did not give a token.

    ``status`` is the HTTP status (0 when no HTTP answer was had). ``error`` is the contract's code
    (``invalid_request``, ``access_denied``, ``not_found``, ``unknown_profile``,
    ``method_not_allowed``, ``refresh_rate_limited``, ``configuration_error``,
    ``upstream_auth_failed``, ``upstream_bad_response``, ``upstream_unavailable``) or one of the
    client's own: ``gateway_forbidden`` (API Gateway refused the signature or IAM denied the call),
    ``gateway_throttled``, ``gateway_error`` (any other answer without a contract code),
    ``bad_response`` (a 200 that is not a token), ``endpoint_unreachable`` and ``no_credentials``.
    ``retry_after`` is the ``Retry-After`` header in seconds, if any.
    """

    def __init__(self, status: int, error: str, message: str, retry_after: int | None = None):
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


@dataclass(frozen=True)
class _Cached:
    token: Token
    deadline: float  # on the client's monotonic clock: request start + expires_in
    margin: float


def resolve_region(
    region: str | None = None,
    endpoint: str | None = None,
    session: botocore.session.Session | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The region to sign for: explicit, else the one in an ``execute-api`` endpoint's host name,
    else ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the AWS profile's region, and ``us-east-1``."""
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
        configured = session.get_config_variable("region")
        if isinstance(configured, str) and configured:
            return configured
    return DEFAULT_REGION


def is_loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenClient:
    """Fetches tokens from the vendor and keeps one in process until it nears expiry.

    Requests are signed (SigV4, service ``execute-api``) with the credentials botocore's chain
    finds (environment, shared files, SSO, container or instance role), or the given ``session``'s.
    ``profile`` is the vendor's credential profile (``GET /token/{profile}``), not an AWS profile:
    for that, pass ``session=botocore.session.Session(profile="...")``.

    The cached token is reused until ``refresh_margin`` seconds before it expires, by default
    ``min(300, 10% of its lifetime)``; a given margin is capped at half the token's lifetime, so a
    short-lived token is still cached. Thread-safe: at most one request to the vendor is in flight;
    concurrent callers wait for it and share its token (or its error).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        region: str | None = None,
        profile: str | None = None,
        session: botocore.session.Session | None = None,
        refresh_margin: float | None = None,
        *,
        timeout: urllib3.Timeout | float | None = None,
        retries: urllib3.Retry | None = None,
        pool: urllib3.PoolManager | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_margin is not None and refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.profile = profile
        self._loopback = is_loopback(endpoint)
        self._own_session = session is None
        self._session = session if session is not None else botocore.session.Session()
        if self._own_session and self._loopback:
            # Instance metadata cannot hold credentials for a local endpoint; skipping it also
            # keeps a machine without credentials from probing the metadata address.
            self._session.get_component("credential_provider").remove("iam-role")
        self.region = resolve_region(region, endpoint, self._session)
        self._refresh_margin = refresh_margin
        self._timeout = (
            timeout
            if isinstance(timeout, urllib3.Timeout)
            else _DEFAULT_TIMEOUT
            if timeout is None
            else urllib3.Timeout(connect=min(3.0, timeout), read=timeout)
        )
        self._retries = retries if retries is not None else _default_retries()
        self._pool = pool if pool is not None else urllib3.PoolManager(maxsize=4)
        self._clock = clock

        self._cond = threading.Condition()
        self._cached: _Cached | None = None
        self._in_flight = False
        self._generation = 0
        self._failure: Exception | None = None
        self._failure_generation = -1

        self._credentials_lock = threading.Lock()
        self._credentials: Credentials | None = None
        self.using_local_test_credentials = False

    # ---------------------------------------------------------------------------- public API

    def get_token(self, min_ttl: int | None = None) -> Token:
        """A token with more than the refresh margin (and at least ``min_ttl`` s) left."""
        if min_ttl is not None and (isinstance(min_ttl, bool) or min_ttl < 0):
            raise ValueError("min_ttl must be a non-negative integer")

        def satisfied() -> Token | None:
            return self._usable(min_ttl)

        query = {"min_ttl": str(min_ttl)} if min_ttl is not None else None
        return self._single_flight(satisfied, lambda: self._call("GET", self._path(), query=query))

    def invalidate(self, rejected_token: str) -> Token:
        """Report a token the target refused and get its replacement.

        If the cached token is already a different one, it is returned without a call. Otherwise
        the rejected token is dropped from the cache and ``POST /token/refresh`` asks the vendor to
        replace it (the vendor answers with a newer token at once if it has one). Concurrent
        reports of the same token cause one call.
        """
        if not rejected_token:
            raise ValueError("rejected_token must be a non-empty string")

        def satisfied() -> Token | None:
            cached = self._cached
            if cached is not None and cached.token.access_token == rejected_token:
                self._cached = None
                return None
            return self._usable(None)

        body = json.dumps({"rejected_token": rejected_token}).encode()
        return self._single_flight(
            satisfied, lambda: self._call("POST", self._path("refresh"), body=body)
        )

    def clear(self) -> None:
        """Forget the cached token."""
        with self._cond:
            self._cached = None

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------------- caching

    def _margin(self, expires_in: int) -> float:
        if self._refresh_margin is None:
            return min(300.0, 0.1 * expires_in)
        return min(self._refresh_margin, 0.5 * expires_in)

    def _usable(self, min_ttl: int | None) -> Token | None:
        """The cached token if it has enough time left. Call with the condition held."""
        cached = self._cached
        if cached is None:
            return None
        left = cached.deadline - self._clock()
        if left <= cached.margin or (min_ttl is not None and left < min_ttl):
            return None
        return cached.token

    def _single_flight(
        self, satisfied: Callable[[], Token | None], fetch: Callable[[], tuple[Token, float]]
    ) -> Token:
        with self._cond:
            while True:
                token = satisfied()
                if token is not None:
                    return token
                if not self._in_flight:
                    self._in_flight = True
                    break
                seen = self._generation
                while self._generation == seen:
                    self._cond.wait()
                if self._failure is not None and self._failure_generation == seen + 1:
                    raise self._failure  # the fetch we waited for failed: share its error
        try:
            token, started = fetch()
        except Exception as exc:
            with self._cond:
                self._finish(failure=exc)
            raise
        except BaseException:
            with self._cond:
                self._finish(failure=None)
            raise
        with self._cond:
            self._cached = _Cached(
                token, started + token.expires_in, self._margin(token.expires_in)
            )
            self._finish(failure=None)
        return token

    def _finish(self, failure: Exception | None) -> None:
        self._in_flight = False
        self._generation += 1
        self._failure = failure
        self._failure_generation = self._generation
        self._cond.notify_all()

    # ---------------------------------------------------------------------------- HTTP

    def _path(self, *suffix: str) -> str:
        parts = ["token"]
        if self.profile:
            parts.append(quote(self.profile, safe=""))
        parts.extend(suffix)
        return "/" + "/".join(parts)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[Token, float]:
        """One signed request; the token and the monotonic time the request started."""
        url = self.endpoint + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
        SigV4Auth(self._frozen_credentials(), SERVICE, self.region).add_auth(request)
        prepared = request.prepare()
        send_headers = dict(prepared.headers.items())
        send_headers["User-Agent"] = f"igni-token-client/{__version__}"
        started = self._clock()
        try:
            response = self._pool.request(
                method,
                url,
                body=body,
                headers=send_headers,
                timeout=self._timeout,
                retries=self._retries,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TokenVendorError(
                0, "endpoint_unreachable", f"cannot reach {self.endpoint}: {reason}"
            ) from exc
        payload = _json_or_none(response.data)
        if response.status == 200:
            return Token.from_json(payload), started
        raise _error_from(response.status, payload, response.data, response.headers)

    def _frozen_credentials(self) -> ReadOnlyCredentials:
        with self._credentials_lock:
            if self._credentials is None:
                found = self._session.get_credentials()
                if found is None and self._loopback:
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
            credentials = self._credentials
        return credentials.get_frozen_credentials()


def _default_retries() -> urllib3.Retry:
    """Connection failures and API Gateway's 504, briefly; never a sleep on a Retry-After.

    The vendor already retries Igni within its own deadline; its 429 and 503 answers carry a
    Retry-After for the caller to decide on.
    """
    return urllib3.Retry(
        total=3,
        connect=2,
        read=0,
        status=1,
        other=0,
        redirect=0,
        status_forcelist=frozenset({504}),
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=0.3,
        backoff_max=2.0,
        respect_retry_after_header=False,
        raise_on_status=False,
        raise_on_redirect=False,
    )


def _non_negative_int(data: Mapping[Any, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TokenVendorError(200, "bad_response", f"the answer's {name} is not a whole number")
    return value


def _json_or_none(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int(when.timestamp() - time.time()))


def _error_from(
    status: int, payload: object, raw: bytes, headers: Mapping[str, str]
) -> TokenVendorError:
    retry_after = _retry_after(headers)
    if isinstance(payload, Mapping):
        error = payload.get("error")
        message = payload.get("message")
        if isinstance(error, str) and error:
            text = message if isinstance(message, str) else ""
            return TokenVendorError(status, error, text, retry_after)
        gateway_message = message if isinstance(message, str) else payload.get("Message")
        if isinstance(gateway_message, str):
            return TokenVendorError(status, _gateway_code(status), gateway_message, retry_after)
    text = raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {status} with no body"
    return TokenVendorError(status, _gateway_code(status), text, retry_after)


def _gateway_code(status: int) -> str:
    if status == 403:
        return "gateway_forbidden"
    if status == 429:
        return "gateway_throttled"
    return "gateway_error"
