"""The memory tier: the tokens one execution environment holds, and the ones it replaced."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from token_vendor.models import RECENT_TOKENS, CachedToken


class MemoryTier:
    """Tokens held by this execution environment, each with when it was last re-checked."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[CachedToken, float]] = {}
        self._replaced: dict[str, deque[str]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[CachedToken, float] | None:
        """The token and the seconds since it was last confirmed against the shared tier."""
        with self._lock:
            entry = self._items.get(key)
        if entry is None:
            return None
        return entry[0], self._clock() - entry[1]

    def put(self, key: str, token: CachedToken) -> None:
        with self._lock:
            old = self._items.get(key)
            if old is not None and old[0].fingerprint != token.fingerprint:
                self._remember(key, old[0].fingerprint)
            self._items[key] = (token, self._clock())

    def _remember(self, key: str, fingerprint: str) -> None:
        replaced = self._replaced.setdefault(key, deque(maxlen=RECENT_TOKENS))
        replaced.appendleft(fingerprint)

    def vended(self, key: str, fingerprint: str) -> bool:
        """Whether this environment holds, or recently held, the token with this fingerprint."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0].fingerprint == fingerprint:
                return True
            return fingerprint in self._replaced.get(key, ())

    def drop(self, key: str, fingerprint: str | None = None) -> None:
        """Drop the key's token (only if it is `fingerprint`, when given); it stays known as
        one this environment vended."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and (fingerprint is None or entry[0].fingerprint == fingerprint):
                del self._items[key]
                self._remember(key, entry[0].fingerprint)
