"""Python client for the Igni token vendor: tokens for internal services in one line.

    from igni_token_client import TokenClient
    client = TokenClient("https://abc123.execute-api.eu-west-1.amazonaws.com/v1")
    headers = {"Authorization": client.get_token().authorization}

``IgniBearerAuth`` (for ``requests``, imported only when used) and ``request_with_token`` (for
urllib3) add the header and, when the target answers 401, report the token and retry once.
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
    from igni_token_client.auth import IgniBearerAuth, TokenSource, request_with_token

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_REGION",
    "IgniBearerAuth",
    "Token",
    "TokenClient",
    "TokenSource",
    "TokenVendorError",
    "__version__",
    "request_with_token",
]

_AUTH_NAMES = frozenset({"IgniBearerAuth", "TokenSource", "request_with_token"})


def __getattr__(name: str) -> Any:
    # Lazily, so that importing the package never imports requests.
    if name in _AUTH_NAMES:
        from igni_token_client import auth  # noqa: PLC0415 - lazy on purpose

        return getattr(auth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
