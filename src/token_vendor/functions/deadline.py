"""How long an invocation may work: Lambda's remaining time, less what the answer needs.

Every entry point (API, maintenance, rotation) budgets its AWS and Igni calls from
``context.get_remaining_time_in_millis()``, keeping some time back to log and answer.
"""

from __future__ import annotations

import math
import time

# Without a usable context (a test, a direct call), what a 25 s function would have.
DEFAULT_REMAINING_MS = 25_000
# Kept back from the remaining time to build and return the answer (API and maintenance).
RESPONSE_RESERVE_MS = 750


def invocation_deadline(context: object, *, reserve_ms: int, cap_ms: int | None = None) -> float:
    """A ``time.monotonic()`` deadline: the remaining time (at most ``cap_ms``) less
    ``reserve_ms``; DEFAULT_REMAINING_MS if the context has no finite remaining time."""
    remaining_ms = DEFAULT_REMAINING_MS
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if callable(getter):
        value = getter()
        if isinstance(value, int | float) and math.isfinite(value):
            remaining_ms = int(value)
    if cap_ms is not None:
        remaining_ms = min(remaining_ms, cap_ms)
    return time.monotonic() + max(0, remaining_ms - reserve_ms) / 1000.0
