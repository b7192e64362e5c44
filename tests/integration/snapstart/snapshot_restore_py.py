"""A stand-in for the managed runtime's ``snapshot_restore_py`` (SnapStart runtime hooks).

Lambda ships the real module only in its managed Python runtimes. This one has the same two
registration functions; ``restore()`` is what Lambda does in a restored environment before its
first event: run the after-restore hooks in the order they were registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Hook = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_before_snapshot: list[Hook] = []
_after_restore: list[Hook] = []


def register_before_snapshot(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    _before_snapshot.append((func, args, kwargs))
    return func


def register_after_restore(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    _after_restore.append((func, args, kwargs))
    return func


def snapshot() -> None:
    """Run the before-snapshot hooks, last registered first (as Lambda does)."""
    for func, args, kwargs in reversed(_before_snapshot):
        func(*args, **kwargs)


def restore() -> None:
    """Run the after-restore hooks, first registered first (as Lambda does)."""
    for func, args, kwargs in _after_restore:
        func(*args, **kwargs)
