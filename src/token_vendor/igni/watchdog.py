"""Cutting an exchange at its deadline, headers included.

urllib3's timeouts bound each socket read, not the request: a server that answers a byte now
and then, within the read timeout each time, holds a request (its status line and headers
too) for as long as it likes, past the Lambda's and API Gateway's limits. The connections of a
`deadline_pool_manager()` register themselves with the thread that sends on them, and
`cut_after(seconds)` shuts that connection's socket down when time is up: the blocked read ends
at once, and urllib3 reports a broken connection like any other.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

# The connection each thread is sending on now (one exchange at a time per thread).
_sending: dict[int, HTTPConnection] = {}
_lock = threading.Lock()


def _register(connection: HTTPConnection) -> None:
    with _lock:
        _sending[threading.get_ident()] = connection


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def deadline_pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 PoolManager whose requests `cut_after` can end."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {
        "http": _WatchedHTTPConnectionPool,
        "https": _WatchedHTTPSConnectionPool,
    }
    return manager


@contextlib.contextmanager
def cut_after(seconds: float) -> Iterator[None]:
    """Shut down the connection this thread sends on if the block is still running then."""
    ident = threading.get_ident()
    timer = threading.Timer(max(0.0, seconds), _cut, args=(ident,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with _lock:
            _sending.pop(ident, None)


def _cut(ident: int) -> None:
    with _lock:
        connection = _sending.get(ident)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
