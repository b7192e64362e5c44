"""Bearer auth for calls to Igni: add the token, and on a 401 report it and retry once.

``IgniBearerAuth`` plugs into ``requests`` (an optional dependency: install
``igni-token-client[requests]``); ``request_with_token`` does the same for urllib3. Both add the
token only to requests for the ``hosts`` allow-list (default ``*.igni.co``), over https (or http to
a loopback host), and report a 401 only when it came from such a host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import urllib3

from igni_token_client._hosts import DEFAULT_HOSTS, HostAllowList
from igni_token_client.client import Token, TokenVendorError

if TYPE_CHECKING:
    from requests import PreparedRequest, Response
    from requests.auth import AuthBase
else:
    try:
        from requests.auth import AuthBase
    except ImportError:  # requests is optional; IgniBearerAuth says so when instantiated

        class AuthBase:
            pass


__all__ = ["DEFAULT_HOSTS", "HostAllowList", "IgniBearerAuth", "TokenSource", "request_with_token"]

logger = logging.getLogger(__name__)


class TokenSource(Protocol):
    """What the hooks need: a ``TokenClient`` or anything with the same two methods."""

    def get_token(self, min_ttl: int | None = None) -> Token: ...

    def invalidate(self, rejected_token: str) -> Token: ...


def _bearer(token: Token) -> str:
    return f"Bearer {token.access_token}"


def _token_of(authorization: str | bytes | None) -> str | None:
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _allow_list(hosts: Iterable[str] | str | HostAllowList) -> HostAllowList:
    return hosts if isinstance(hosts, HostAllowList) else HostAllowList(hosts)


def _url_allowed(allowed: HostAllowList, url: str | None) -> bool:
    if not url:
        return False
    try:
        parts = urlsplit(url)
        parsed = urllib3.util.parse_url(url)
    except ValueError:
        return False
    # Both parsers must agree on the host: urllib3's is the one that sends.
    if (parsed.host or "").strip("[]").lower() != (parts.hostname or "") or "\\" in url:
        return False
    return allowed.allows(parts.scheme, parts.hostname)


def _replacement(source: TokenSource, rejected: str | None) -> Token | None:
    """The token to retry with after a 401, or None when there is no point in retrying."""
    if rejected is None:
        return None
    try:
        fresh = source.invalidate(rejected)
    except TokenVendorError as exc:
        logger.warning("Igni refused a token and the vendor could not replace it: %s", exc)
        return None
    return None if fresh.access_token == rejected else fresh


class IgniBearerAuth(AuthBase):
    """``requests`` auth: ``Authorization: Bearer <token>``, and one retry after a 401.

    When the target answers 401, the token that was sent is reported with
    ``client.invalidate(token)`` and the request is sent again, once, with the replacement. If the
    vendor cannot replace it (or gives the same token back), the 401 is returned as it came. A
    request whose body is a one-shot stream is not retried.

    Only requests to ``hosts`` (exact names or ``*.``-prefixed suffixes; default ``*.igni.co``),
    over https or to a loopback host, get the token; others are sent as they are, and a 401 from
    any other host (after a redirect, say) is never reported.

        session.get("https://acme.igni.co/api/v1/things", auth=IgniBearerAuth(client))
    """

    def __init__(
        self,
        client: TokenSource,
        min_ttl: int | None = None,
        *,
        hosts: Iterable[str] | str | HostAllowList = DEFAULT_HOSTS,
    ) -> None:
        if AuthBase.__module__ != "requests.auth":
            raise ImportError(
                "IgniBearerAuth needs requests: pip install 'igni-token-client[requests]'"
            )
        self.client = client
        self.min_ttl = min_ttl
        self.hosts = _allow_list(hosts)

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        if not _url_allowed(self.hosts, r.url):
            return r
        r.headers["Authorization"] = _bearer(self.client.get_token(self.min_ttl))
        body_position: int | None = None
        if r.body is not None and hasattr(r.body, "tell"):
            try:
                body_position = r.body.tell()
            except OSError:
                body_position = None
        r.register_hook("response", self._make_hook(body_position))
        return r

    def _make_hook(self, body_position: int | None) -> Any:
        def handle_401(response: Response, **kwargs: Any) -> Response:
            return self._handle_401(response, body_position, **kwargs)

        return handle_401

    def _handle_401(self, response: Response, body_position: int | None, **kwargs: Any) -> Response:
        if response.status_code != 401 or not _url_allowed(self.hosts, response.request.url):
            return response
        request = response.request
        body = request.body
        if body is not None and not isinstance(body, str | bytes):
            seek = getattr(body, "seek", None)
            if body_position is None or seek is None:
                return response  # a one-shot stream cannot be sent again
            seek(body_position)
        fresh = _replacement(self.client, _token_of(request.headers.get("Authorization")))
        if fresh is None:
            return response

        # As requests' own HTTPDigestAuth does: drain the 401, resend through the same adapter.
        _ = response.content
        response.close()
        retry = request.copy()
        retry.headers["Authorization"] = _bearer(fresh)
        # The adapter does not run response hooks, so the retry cannot trigger another retry.
        connection = response.connection  # the adapter that sent the first request
        second: Response = connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second


def request_with_token(
    pool: urllib3.PoolManager | urllib3.HTTPConnectionPool,
    client: TokenSource,
    method: str,
    url: str,
    *,
    min_ttl: int | None = None,
    hosts: Iterable[str] | str | HostAllowList = DEFAULT_HOSTS,
    **kw: Any,
) -> urllib3.BaseHTTPResponse:
    """``pool.request(method, url, **kw)`` with ``Authorization: Bearer``; on 401, report the token
    and retry once with its replacement (as :class:`IgniBearerAuth` does for ``requests``).

    The token is added only when ``url``'s host is in ``hosts`` (default ``*.igni.co``) and it is
    https or loopback; otherwise the request is sent without it. A 401 is reported only when the
    answer came from such a URL (not after a redirect elsewhere). Keep ``preload_content`` at its
    default (True) if you want the 401 drained before the retry; a file-like ``body`` is not sent
    twice.
    """
    allowed = _allow_list(hosts)
    headers = dict(kw.pop("headers", None) or {})
    target = _absolute(url, _pool_origin(pool) or url)
    if not _url_allowed(allowed, target):
        return pool.request(method, url, headers=headers, **kw)
    token = client.get_token(min_ttl)
    headers["Authorization"] = _bearer(token)
    response = pool.request(method, url, headers=headers, **kw)
    if response.status != 401:
        return response
    final_url = getattr(response, "url", None) or target
    if not _url_allowed(allowed, _absolute(final_url, target)):
        return response
    body = kw.get("body")
    if body is not None and not isinstance(body, str | bytes):
        return response
    fresh = _replacement(client, token.access_token)
    if fresh is None:
        return response
    response.drain_conn()
    response.release_conn()
    headers["Authorization"] = _bearer(fresh)
    return pool.request(method, url, headers=headers, **kw)


def _pool_origin(pool: urllib3.PoolManager | urllib3.HTTPConnectionPool) -> str | None:
    """``scheme://host:port`` of a connection pool for one host, None for a PoolManager."""
    if not isinstance(pool, urllib3.HTTPConnectionPool) or not pool.host:
        return None
    host = f"[{pool.host}]" if ":" in pool.host else pool.host
    return f"{pool.scheme}://{host}:{pool.port}" if pool.port else f"{pool.scheme}://{host}"


def _absolute(url: str, base: str) -> str:
    """A path (what a pool for one host is given, or answers) resolved against ``base``."""
    if "://" in url:
        return url
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}{url}"
