"""TokenClient: Igni tokens from the token vendor, signed with the caller's AWS credentials."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, Self
from urllib.parse import unquote, urlencode

import botocore.session
import urllib3

from igni_token_client._core import (
    DEFAULT_ENDPOINT,
    DEFAULT_REGION,
    FETCH,
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
    MAX_RETRY_AFTER,
    Signer,
    Step,
    Token,
    TokenState,
    TokenVendorError,
    __version__,
    ca_bundle_for,
    check_endpoint,
    check_timeout,
    endpoint_from,
    is_loopback,
    is_unknown_token,
    profile_from,
    proxy_for,
    resolve_region,
    retry_after_seconds,
    skip_instance_metadata,
    token_or_error,
    token_path,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REGION",
    "LOCAL_TEST_ACCESS_KEY_ID",
    "LOCAL_TEST_SECRET_ACCESS_KEY",
    "MAX_RETRY_AFTER",
    "Token",
    "TokenClient",
    "TokenVendorError",
    "__version__",
    "is_loopback",
    "resolve_region",
    "retry_after_seconds",
]

_DEFAULT_TIMEOUT: Final = urllib3.Timeout(connect=3.0, read=30.0)


class TokenClient:
    """Fetches tokens from the vendor and keeps one in process, refreshing it early.

    Requests are signed (SigV4, service ``execute-api``) with the credentials botocore's chain
    finds (environment, shared files, SSO, container or instance role), or the given ``session``'s.
    ``endpoint`` defaults to ``$IGNI_TOKEN_ENDPOINT``, else ``make local``'s address; it must be
    https unless its host is loopback. ``profile`` is the vendor's credential profile
    (``GET /token/{profile}``; default ``$IGNI_TOKEN_PROFILE``, ``""`` for the default profile), not
    an AWS profile: for that, pass ``session=botocore.session.Session(profile="...")``.

    From half of the token's lifetime (as received) ``get_token()`` refreshes it, and if that
    fails it keeps serving the cached token; it raises only once the token is inside the margin
    (``refresh_margin``, by default ``min(300, 10% of its lifetime)``, capped at half the lifetime)
    and the vendor still fails. After a 429 or 503 with ``Retry-After`` (at most 300 s), calls
    that need the vendor raise that error again, without a request, until the time has passed.
    Thread-safe: at most one request to the vendor is in flight.

    Like botocore, it honours ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` and ``AWS_CA_BUNDLE``
    (or the AWS profile's ``ca_bundle``), unless a ``pool`` is given. Every failure is a
    :class:`TokenVendorError`; all timing goes through ``clock``.
    """

    def __init__(
        self,
        endpoint: str | None = None,
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
        if refresh_margin is not None and not (
            refresh_margin >= 0 and math.isfinite(refresh_margin)
        ):
            raise ValueError("refresh_margin must be a finite number >= 0")
        if not isinstance(timeout, urllib3.Timeout):
            check_timeout(timeout)
        self.endpoint = check_endpoint(endpoint_from(endpoint))
        self.profile = profile_from(profile)
        self._loopback = is_loopback(self.endpoint)
        self._own_session = session is None
        self._session = session if session is not None else botocore.session.Session()
        if self._own_session and self._loopback:
            skip_instance_metadata(self._session)
        self.region = resolve_region(region, self.endpoint, self._session)
        self._signer = Signer(self._session, self.region, self.endpoint, self._loopback)
        self._timeout = (
            timeout
            if isinstance(timeout, urllib3.Timeout)
            else _DEFAULT_TIMEOUT
            if timeout is None
            else urllib3.Timeout(connect=min(3.0, timeout), read=timeout)
        )
        self._retries = retries if retries is not None else _default_retries()
        self._pool: urllib3.PoolManager | None = pool
        self._via = ""  # " through the proxy ..." once the pool is made with one
        self._pool_lock = threading.Lock()
        self._cond = threading.Condition()
        self._state = TokenState(clock, refresh_margin)

    @property
    def using_local_test_credentials(self) -> bool:
        """Whether requests were signed with make local's documented test credentials."""
        return self._signer.using_local_test_credentials

    # ---------------------------------------------------------------------------- public API

    def get_token(self, min_ttl: int | None = None) -> Token:
        """A token with more than the refresh margin (and at least ``min_ttl`` s) left."""
        if min_ttl is not None and (
            isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or min_ttl < 0
        ):
            raise ValueError("min_ttl must be a non-negative integer")
        query = {"min_ttl": str(min_ttl)} if min_ttl is not None else None
        return self._single_flight(
            lambda: self._state.plan_get(min_ttl),
            lambda: self._call("GET", token_path(self.profile), query=query),
            min_ttl,
            refresh=False,
        )

    def invalidate(self, rejected_token: str) -> Token:
        """Report a token the target refused and get its replacement.

        If the cached token is already a different one, it is returned without a call. Otherwise
        the rejected token is dropped from the cache and ``POST /token/refresh`` asks the vendor to
        replace it (the vendor answers with a newer token at once if it has one); if the vendor
        answers 409 ``unknown_token``, an ordinary ``GET /token`` follows. Concurrent reports of
        the same token cause one call.
        """
        if not rejected_token:
            raise ValueError("rejected_token must be a non-empty string")
        return self._single_flight(
            lambda: self._state.plan_invalidate(rejected_token),
            lambda: self._refresh(rejected_token),
            None,
            refresh=True,
        )

    def clear(self) -> None:
        """Forget the cached token."""
        with self._cond:
            self._state.cached = None

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
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

    def _single_flight(
        self,
        plan: Callable[[], Step],
        fetch: Callable[[], tuple[Token, float]],
        min_ttl: int | None,
        *,
        refresh: bool,
    ) -> Token:
        state = self._state
        with self._cond:
            while True:
                step = plan()  # raises a remembered Retry-After error
                if isinstance(step, Token):
                    return step
                if step is FETCH:
                    break
                seen = state.generation
                while state.generation == seen:
                    self._cond.wait()
                failure = state.shared_failure(seen)
                if failure is not None:
                    token = state.usable(state.clock(), min_ttl)
                    if token is not None:
                        return token
                    raise failure  # the fetch we waited for failed: share its error
        try:
            token, started = fetch()
        except TokenVendorError as exc:
            with self._cond:
                state.failed(exc, refresh)
                fallback = state.fallback(exc, min_ttl)
                self._cond.notify_all()
            if fallback is not None:
                return fallback
            raise
        except BaseException:
            with self._cond:
                state.abandoned()
                self._cond.notify_all()
            raise
        with self._cond:
            state.succeeded(token, started)
            self._cond.notify_all()
        return token

    # ---------------------------------------------------------------------------- HTTP

    def _refresh(self, rejected_token: str) -> tuple[Token, float]:
        body = json.dumps({"rejected_token": rejected_token}).encode()
        try:
            return self._call("POST", token_path(self.profile, "refresh"), body=body)
        except TokenVendorError as exc:
            if not is_unknown_token(exc):
                raise
        return self._call("GET", token_path(self.profile))

    def _transport(self) -> urllib3.PoolManager:
        """The given pool, else one that follows the proxy variables and the CA bundle."""
        with self._pool_lock:
            if self._pool is None:
                try:
                    ca_bundle = ca_bundle_for(self._session)
                except Exception as exc:  # botocore's configuration errors
                    raise TokenVendorError(
                        0, "no_credentials", f"AWS configuration: {exc}"
                    ) from None
                proxy = proxy_for(self.endpoint)
                if proxy is None:
                    self._pool = urllib3.PoolManager(maxsize=4, ca_certs=ca_bundle)
                else:
                    self._via = f" through the proxy {proxy}"  # its password: redacted
                    self._pool = urllib3.ProxyManager(
                        proxy,
                        maxsize=4,
                        ca_certs=ca_bundle,
                        proxy_headers=_proxy_headers(proxy),
                    )
            return self._pool

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[Token, float]:
        """One signed request; the token and the time (on ``clock``) the request started."""
        url = self.endpoint + path + (f"?{urlencode(query)}" if query else "")
        headers = self._signer.headers(method, url, body)
        pool = self._transport()
        started = self._state.clock()
        try:
            response = pool.request(
                method,
                url,
                body=body,
                headers=headers,
                timeout=self._timeout,
                retries=self._retries,
                redirect=False,
            )
        except Exception as exc:  # urllib3's, and anything else: always a TokenVendorError
            reason = getattr(exc, "reason", None) or exc
            raise TokenVendorError(
                0, "endpoint_unreachable", f"cannot reach {self.endpoint}{self._via}: {reason}"
            ) from None
        return token_or_error(response.status, response.headers, response.data), started


def _proxy_headers(proxy: str) -> dict[str, str] | None:
    """Proxy-Authorization from the proxy URL's user and password, as botocore sends it."""
    parts = urllib3.util.parse_url(proxy)
    if not parts.auth:
        return None
    user, _, password = parts.auth.partition(":")
    return urllib3.util.make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")


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
