"""AsyncTokenClient: TokenClient's contract for asyncio and trio, over httpx.

Needs the ``httpx`` extra: ``pip install 'igni-token-client[httpx]'``.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlencode

try:
    import anyio
    import anyio.to_thread
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        "AsyncTokenClient and IgniHttpxAuth need httpx: pip install 'igni-token-client[httpx]'"
    ) from exc

import botocore.session

from igni_token_client._core import (
    FETCH,
    Signer,
    Step,
    Token,
    TokenState,
    TokenVendorError,
    ca_bundle_for,
    check_endpoint,
    check_timeout,
    endpoint_from,
    is_loopback,
    is_unknown_token,
    profile_from,
    proxy_for,
    resolve_region,
    skip_instance_metadata,
    token_or_error,
    token_path,
)

__all__ = ["AsyncTokenClient"]

_CONNECT_ATTEMPTS: Final = 3  # as the sync client: a refused connection is tried twice more


class AsyncTokenClient:
    """:class:`~igni_token_client.TokenClient` for ``async`` code: the same arguments (``http``,
    an ``httpx.AsyncClient``, instead of ``pool``), the same refresh, ``Retry-After`` and error
    contract, with ``await client.get_token()`` and ``await client.invalidate(token)``.

    At most one request to the vendor is in flight per client; use one client per event loop.
    Signing (botocore's credential chain may read files or call SSO) runs in a worker thread.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        session: botocore.session.Session | None = None,
        refresh_margin: float | None = None,
        *,
        timeout: float | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_margin is not None and not (
            refresh_margin >= 0 and math.isfinite(refresh_margin)
        ):
            raise ValueError("refresh_margin must be a finite number >= 0")
        check_timeout(timeout)
        self.endpoint = check_endpoint(endpoint_from(endpoint))
        self.profile = profile_from(profile)
        loopback = is_loopback(self.endpoint)
        self._session = session if session is not None else botocore.session.Session()
        if session is None and loopback:
            skip_instance_metadata(self._session)
        self.region = resolve_region(region, self.endpoint, self._session)
        self._signer = Signer(self._session, self.region, self.endpoint, loopback)
        read = 30.0 if timeout is None else timeout
        self._timeout = httpx.Timeout(read, connect=min(3.0, read))
        self._http = http
        self._own_http = http is None
        self._state = TokenState(clock, refresh_margin)
        self._done: anyio.Event | None = None
        self._via = ""
        self._http_loop: object | None = None

    @property
    def using_local_test_credentials(self) -> bool:
        return self._signer.using_local_test_credentials

    async def get_token(self, min_ttl: int | None = None) -> Token:
        """A token with more than the refresh margin (and at least ``min_ttl`` s) left."""
        if min_ttl is not None and (
            isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or min_ttl < 0
        ):
            raise ValueError("min_ttl must be a non-negative integer")
        query = {"min_ttl": str(min_ttl)} if min_ttl is not None else None

        async def fetch() -> tuple[Token, float]:
            return await self._call("GET", token_path(self.profile), query=query)

        return await self._single_flight(
            lambda: self._state.plan_get(min_ttl), fetch, min_ttl, refresh=False
        )

    async def invalidate(self, rejected_token: str) -> Token:
        """Report a token the target refused and get its replacement (as TokenClient does)."""
        if not rejected_token:
            raise ValueError("rejected_token must be a non-empty string")
        return await self._single_flight(
            lambda: self._state.plan_invalidate(rejected_token),
            lambda: self._refresh(rejected_token),
            None,
            refresh=True,
        )

    def clear(self) -> None:
        """Forget the cached token."""
        self._state.cached = None

    async def aclose(self) -> None:
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    async def close(self) -> None:
        """The same as :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _single_flight(
        self,
        plan: Callable[[], Step],
        fetch: Callable[[], Awaitable[tuple[Token, float]]],
        min_ttl: int | None,
        *,
        refresh: bool,
    ) -> Token:
        state = self._state
        while True:
            step = plan()  # no await between the plan and taking the flight: one task at a time
            if isinstance(step, Token):
                return step
            if step is FETCH:
                done = self._done = anyio.Event()
                break
            seen = state.generation
            waiting_for = self._done
            if waiting_for is not None:
                await waiting_for.wait()
            failure = state.shared_failure(seen)
            if failure is not None:
                token = state.usable(state.clock(), min_ttl)
                if token is not None:
                    return token
                raise failure
        try:
            token, started = await fetch()
        except TokenVendorError as exc:
            state.failed(exc, refresh)
            done.set()
            fallback = state.fallback(exc, min_ttl)
            if fallback is not None:
                return fallback
            raise
        except BaseException:
            state.abandoned()
            done.set()
            raise
        state.succeeded(token, started)
        done.set()
        return token

    async def _refresh(self, rejected_token: str) -> tuple[Token, float]:
        body = json.dumps({"rejected_token": rejected_token}).encode()
        try:
            return await self._call("POST", token_path(self.profile, "refresh"), body=body)
        except TokenVendorError as exc:
            if not is_unknown_token(exc):
                raise
        return await self._call("GET", token_path(self.profile))

    def _transport(self) -> httpx.AsyncClient:
        loop = _running_loop()
        if self._own_http and self._http is not None and loop is not self._http_loop:
            # A new event loop (asyncio.run again): the old loop's connections cannot serve it,
            # and that loop is usually closed, so the client is left for the collector.
            self._http = None
        if self._http is None:
            self._http_loop = loop
            try:
                ca_bundle = ca_bundle_for(self._session)
            except Exception as exc:  # botocore's configuration errors
                raise TokenVendorError(0, "no_credentials", f"AWS configuration: {exc}") from None
            try:
                verify = ssl.create_default_context(cafile=ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise TokenVendorError(
                    0, "endpoint_unreachable", f"cannot read the CA bundle {ca_bundle}: {exc}"
                ) from None
            proxy = proxy_for(self.endpoint)
            self._via = f" through the proxy {proxy}" if proxy else ""  # its password: redacted
            transport = httpx.AsyncHTTPTransport(
                verify=verify,
                proxy=proxy,
                retries=_CONNECT_ATTEMPTS - 1,
                trust_env=False,
            )
            self._http = httpx.AsyncClient(
                transport=transport, timeout=self._timeout, trust_env=False, follow_redirects=False
            )
        return self._http

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[Token, float]:
        url = self.endpoint + path + (f"?{urlencode(query)}" if query else "")
        headers = await anyio.to_thread.run_sync(self._signer.headers, method, url, body)
        http = self._transport()
        started = self._state.clock()
        for attempt in range(2):  # API Gateway's 504, once, as the sync client
            try:
                response = await http.request(method, url, content=body, headers=headers)
            except Exception as exc:  # httpx's, and anything else: always a TokenVendorError
                raise TokenVendorError(
                    0,
                    "endpoint_unreachable",
                    f"cannot reach {self.endpoint}{self._via}: {type(exc).__name__}: {exc}",
                ) from None
            if response.status_code != 504 or attempt:
                break
        return token_or_error(response.status_code, response.headers, response.content), started


def _running_loop() -> object | None:
    """The running asyncio loop; None under trio (one httpx client serves the whole run)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
