"""IgniHttpxAuth: the bearer token for httpx, sync and async, with one retry after a 401.

Needs the ``httpx`` extra: ``pip install 'igni-token-client[httpx]'``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, Generator, Iterable
from typing import Protocol

try:
    import anyio.to_thread
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        "AsyncTokenClient and IgniHttpxAuth need httpx: pip install 'igni-token-client[httpx]'"
    ) from exc

from igni_token_client._hosts import DEFAULT_HOSTS, HostAllowList
from igni_token_client.auth import TokenSource
from igni_token_client.client import Token, TokenVendorError

__all__ = ["AsyncTokenSource", "IgniHttpxAuth"]

logger = logging.getLogger("igni_token_client.auth")


class AsyncTokenSource(Protocol):
    """What the async flow needs: an ``AsyncTokenClient`` or anything with the same methods."""

    async def get_token(self, min_ttl: int | None = None) -> Token: ...

    async def invalidate(self, rejected_token: str) -> Token: ...


def _bearer(token: Token) -> str:
    return f"Bearer {token.access_token}"


class IgniHttpxAuth(httpx.Auth):
    """``httpx.Auth`` for ``httpx.Client`` and ``httpx.AsyncClient``: ``Authorization: Bearer``
    for the ``hosts`` allow-list (default ``*.igni.co``; https, or http to loopback), and after a
    401 from such a host, one report of the token and one retry with its replacement.

    ``client`` is a :class:`~igni_token_client.TokenClient` (with an ``AsyncClient``, its calls run
    in a worker thread) or an :class:`~igni_token_client.AsyncTokenClient` (``AsyncClient`` only).

        httpx.Client(auth=IgniHttpxAuth(token_client)).get("https://acme.igni.co/api/v1/things")
    """

    requires_request_body = True  # so that the body can be sent again after a 401

    def __init__(
        self,
        client: TokenSource | AsyncTokenSource,
        min_ttl: int | None = None,
        *,
        hosts: Iterable[str] | str | HostAllowList = DEFAULT_HOSTS,
    ) -> None:
        self.client = client
        self.min_ttl = min_ttl
        self.hosts = hosts if isinstance(hosts, HostAllowList) else HostAllowList(hosts)
        self._async_source = inspect.iscoroutinefunction(getattr(client, "get_token", None))

    def _allowed(self, request: httpx.Request) -> bool:
        return self.hosts.allows(request.url.scheme, request.url.host)

    def _should_retry(self, response: httpx.Response, sent: str) -> bool:
        final = response.request
        return (
            response.status_code == 401
            and self._allowed(final)
            and final.headers.get("Authorization") == sent
        )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if not self._allowed(request):
            yield request
            return
        if self._async_source:
            raise TypeError("an AsyncTokenClient works with httpx.AsyncClient only")
        source: TokenSource = self.client  # type: ignore[assignment]
        token = source.get_token(self.min_ttl)
        request.headers["Authorization"] = sent = _bearer(token)
        response = yield request
        if not self._should_retry(response, sent):
            return
        try:
            fresh = source.invalidate(token.access_token)
        except TokenVendorError as exc:
            logger.warning("Igni refused a token and the vendor could not replace it: %s", exc)
            return
        if fresh.access_token != token.access_token:
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._allowed(request):
            yield request
            return
        token = await self._get()
        request.headers["Authorization"] = sent = _bearer(token)
        response = yield request
        if not self._should_retry(response, sent):
            return
        try:
            fresh = await self._invalidate(token.access_token)
        except TokenVendorError as exc:
            logger.warning("Igni refused a token and the vendor could not replace it: %s", exc)
            return
        if fresh.access_token != token.access_token:
            request.headers["Authorization"] = _bearer(fresh)
            yield request

    async def _get(self) -> Token:
        if self._async_source:
            source: AsyncTokenSource = self.client  # type: ignore[assignment]
            return await source.get_token(self.min_ttl)
        sync: TokenSource = self.client  # type: ignore[assignment]
        return await anyio.to_thread.run_sync(sync.get_token, self.min_ttl)

    async def _invalidate(self, rejected: str) -> Token:
        if self._async_source:
            source: AsyncTokenSource = self.client  # type: ignore[assignment]
            return await source.invalidate(rejected)
        sync: TokenSource = self.client  # type: ignore[assignment]
        return await anyio.to_thread.run_sync(sync.invalidate, rejected)
