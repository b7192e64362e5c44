"""Which URLs may receive the Igni token: a host allow-list, and https (or loopback) only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

__all__ = ["DEFAULT_HOSTS", "HostAllowList", "is_loopback_host"]

DEFAULT_HOSTS: Final = ("*.igni.co",)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1, an IPv4-mapped 127.x)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _normal(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _valid_pattern(body: str) -> bool:
    if not body or any(c in body for c in "*/@\\?# \t"):
        return False
    if ":" in body:  # only an IPv6 address may have one: host:port is not a pattern
        try:
            ipaddress.IPv6Address(body)
        except ValueError:
            return False
    return True


class HostAllowList:
    """Exact host names (``api.igni.co``, ``127.0.0.1``) or ``*.``-prefixed suffixes.

    ``*.igni.co`` matches ``acme.igni.co`` and ``a.b.igni.co``, not ``igni.co`` itself nor
    ``evil-igni.co``. Ports are not part of a pattern. A URL gets the token only when its host
    matches and it is https, or http to a loopback host.
    """

    def __init__(self, hosts: Iterable[str] | str = DEFAULT_HOSTS) -> None:
        patterns = (hosts,) if isinstance(hosts, str) else tuple(hosts)
        if not patterns:
            raise ValueError("hosts must name at least one host")
        exact: set[str] = set()
        suffixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(f"hosts must be strings, got {pattern!r}")
            value = _normal(pattern)
            body = value.removeprefix("*.")
            if not _valid_pattern(body):
                raise ValueError(
                    f"not a host name or *.suffix: {pattern!r} (no scheme, port or path)"
                )
            if value.startswith("*."):
                suffixes.append("." + body)
            else:
                exact.add(value)
        self.patterns = patterns
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    def allows_host(self, host: str | None) -> bool:
        if not host:
            return False
        value = _normal(host)
        return value in self._exact or any(value.endswith(s) for s in self._suffixes)

    def allows(self, scheme: str | None, host: str | None) -> bool:
        """Whether a request to this scheme and host may carry the token."""
        if not self.allows_host(host):
            return False
        scheme = (scheme or "").lower()
        return scheme == "https" or (scheme == "http" and is_loopback_host(host or ""))

    def __repr__(self) -> str:
        return f"HostAllowList({list(self.patterns)!r})"
