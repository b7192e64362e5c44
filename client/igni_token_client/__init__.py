"""Python client for the Igni token vendor: tokens for internal services in one line.

    from igni_token_client import TokenClient
    client = TokenClient("https://abc123.execute-api.eu-west-1.amazonaws.com/v1")
    headers = {"Authorization": client.get_token().authorization}

``IgniBearerAuth`` (for ``requests``) and ``request_with_token`` (for urllib3) add the header for
the allowed ``hosts`` and, when such a host answers 401, report the token and retry once;
``IgniHttpxAuth`` does the same for httpx, and ``AsyncTokenClient`` is the async client (both
need the ``httpx`` extra). Each is imported only when used: importing this package imports neither
requests nor httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igni_token_client.client import (
    DEFAULT_ENDPOINT,
    DEFAULT_REGION,
    Token,
    TokenClient,
    TokenVendorError,
    __version__,
)

if TYPE_CHECKING:
    # The httpx names stay out of __all__, so that ``import *`` works without the extra.
    from igni_token_client.aio import AsyncTokenClient as AsyncTokenClient
    from igni_token_client.auth import (
        HostAllowList,
        IgniBearerAuth,
        TokenSource,
        request_with_token,
    )
    from igni_token_client.httpx_auth import AsyncTokenSource as AsyncTokenSource
    from igni_token_client.httpx_auth import IgniHttpxAuth as IgniHttpxAuth

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REGION",
    "HostAllowList",
    "IgniBearerAuth",
    "Token",
    "TokenClient",
    "TokenSource",
    "TokenVendorError",
    "__version__",
    "request_with_token",
]

# Lazily, so that importing the package never imports requests or httpx.
_LAZY = {
    "HostAllowList": "igni_token_client.auth",
    "IgniBearerAuth": "igni_token_client.auth",
    "TokenSource": "igni_token_client.auth",
    "request_with_token": "igni_token_client.auth",
    "AsyncTokenClient": "igni_token_client.aio",
    "AsyncTokenSource": "igni_token_client.httpx_auth",
    "IgniHttpxAuth": "igni_token_client.httpx_auth",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - lazy on purpose

    return getattr(importlib.import_module(module), name)
