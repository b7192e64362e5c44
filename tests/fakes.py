"""In-memory stand-ins for unit and model tests: a clock that moves only when told, and the
token table with DynamoDB's conditional-write semantics on one item per key.

The integration tests play the same protocol against real servers (the moto server, DynamoDB
Local) with real processes; these fakes make the state machine fast enough to be searched by
Hypothesis, with time that comes from the clock, never from sleeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from token_vendor.aws.token_cipher import UndecryptableToken
from token_vendor.errors import StoreUnavailable
from token_vendor.models import RECENT_TOKENS, CachedToken, Record

EPOCH = 1_800_000_000.0


class Clock:
    """Wall and monotonic time that move only when someone sleeps or the test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self) -> float:
        return EPOCH + self.t

    def mono(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class Cipher(Protocol):
    def encrypt(self, token: str, cache_key: str) -> tuple[bytes, str]: ...

    def decrypt(self, blob: bytes, scheme: str, cache_key: str, *, quick: bool = False) -> str: ...


class FakeTable:
    """One DynamoDB item per key, with the conditions TokenTable's writes carry.

    With a `cipher`, a committed token is kept only as the cipher's blob (as the real table
    keeps it) and decrypted on every read. `fault`, when set, runs at the start of every
    operation with its name: it may raise StoreUnavailable or move a clock (a hanging call).
    """

    def __init__(self, cipher: Cipher | None = None) -> None:
        self.items: dict[str, Record] = {}
        self.sealed: dict[str, tuple[bytes, str]] = {}
        self.cipher = cipher
        self.reads = 0
        self.down = False
        self.fault: Callable[[str], None] | None = None
        # The owner whose release the table last refused: its lease expires by itself.
        self.failed_release: str | None = None
        self.before_reads: deque[Callable[[], object] | None] = deque()

    def _check(self, operation: str) -> None:
        if self.fault is not None:
            self.fault(operation)
        if self.down:
            raise StoreUnavailable(f"DynamoDB {operation} unreachable (ReadTimeoutError)")

    def get(self, key: str, *, quick: bool = False) -> Record | None:
        self._check("GetItem")
        self.reads += 1
        # What other environments do before each of our reads, one entry a read (tests set it).
        if self.before_reads:
            action = self.before_reads.popleft()
            if action is not None:
                action()
        return self._read(key, quick=quick)

    def _read(self, key: str, *, quick: bool = False) -> Record | None:
        item = self.items.get(key)
        if item is None or self.cipher is None or key not in self.sealed:
            return item
        blob, scheme = self.sealed[key]
        assert item.token is not None
        try:
            plain = self.cipher.decrypt(blob, scheme, key, quick=quick)
        except UndecryptableToken:
            return dataclasses.replace(item, token=None, undecryptable=True)
        return dataclasses.replace(item, token=dataclasses.replace(item.token, access_token=plain))

    def try_acquire_lease(
        self,
        key: str,
        *,
        owner: str,
        now: float,
        lease_until: float,
        seen_fingerprint: str | None,
        forced_floor: float | None = None,
    ) -> tuple[bool, Record | None]:
        self._check("UpdateItem")
        item = self.items.get(key, Record())
        free = item.lease_owner is None or item.lease_until <= now
        fenced = item.token_fingerprint == seen_fingerprint
        unforced = forced_floor is None or item.forced_at <= forced_floor
        if not (free and fenced and unforced):
            return False, self._read(key)
        changes: dict[str, Any] = {"lease_owner": owner, "lease_until": lease_until}
        if forced_floor is not None:
            changes["forced_at"] = now
        self.items[key] = dataclasses.replace(item, **changes)
        return True, None

    def commit(
        self,
        key: str,
        *,
        owner: str,
        token: CachedToken,
        now: float,
        recent: tuple[str, ...] = (),
    ) -> tuple[bool, Record | None]:
        self._check("UpdateItem")
        sealed = None
        if self.cipher is not None:
            try:
                sealed = self.cipher.encrypt(token.access_token, key)
            except StoreUnavailable:
                # As TokenTable does: the lease is freed before the failure is raised.
                with contextlib.suppress(StoreUnavailable):
                    self.release(key, owner=owner)
                raise
        item = self.items.get(key, Record())
        if item.lease_owner != owner:
            return False, self._read(key)
        kept = token if sealed is None else dataclasses.replace(token, access_token="")
        self.items[key] = dataclasses.replace(
            item,
            token=kept,
            token_fingerprint=token.fingerprint,
            lease_owner=None,
            lease_until=0.0,
            backoff_until=0.0,
            failures=0,
            failure_code=None,
            auth_failed_until=0.0,
            auth_failed_version=None,
            undecryptable=False,
            recent_fingerprints=recent[:RECENT_TOKENS] if recent else item.recent_fingerprints,
        )
        if sealed is not None:
            self.sealed[key] = sealed
        return True, None

    def record_failure(self, key: str, *, owner: str, **changes: Any) -> None:
        self._check("UpdateItem")
        item = self.items.get(key, Record())
        if item.lease_owner == owner:
            kept = {k: v for k, v in changes.items() if v is not None}
            self.items[key] = dataclasses.replace(item, lease_owner=None, lease_until=0.0, **kept)

    def release(self, key: str, *, owner: str) -> None:
        try:
            self._check("UpdateItem")
        except StoreUnavailable:
            self.failed_release = owner
            raise
        item = self.items.get(key)
        if item is not None and item.lease_owner == owner:
            self.items[key] = dataclasses.replace(item, lease_owner=None, lease_until=0.0)
