"""The sample events in events/, with overrides, and a real stack's secret for the placeholder.

The events name the secret ``igni-token-vendor/local/default``; swapping in a stack's secret
makes a ``Secret Label Updated`` event match that stack, as the template's rule would.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
PLACEHOLDER_SECRET_NAME = "igni-token-vendor/local/default"
PLACEHOLDER_SECRET_ARN = (
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:igni-token-vendor/local/default-AbCdEf"
)

Event = dict[str, Any]
_TWIN = {"queryStringParameters": "multiValueQueryStringParameters", "headers": "multiValueHeaders"}


def event_path(name: str) -> Path:
    """``name`` itself when it is a file (any path, any suffix), else events/<name>.json (the
    .json suffix may be given)."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    in_events = EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
    return in_events if in_events.is_file() else candidate


def substitute_secret(event: Any, secret_arn: str, secret_name: str) -> Any:
    """A copy of ``event`` with the placeholder secret ARN and name replaced everywhere."""
    text = json.dumps(event)  # The ARN holds the name, so it goes first.
    for old, new in ((PLACEHOLDER_SECRET_ARN, secret_arn), (PLACEHOLDER_SECRET_NAME, secret_name)):
        text = text.replace(old, json.dumps(new)[1:-1])
    return json.loads(text)


def load_event(
    name: str, /, *, secret_arn: str | None = None, secret_name: str | None = None, **overrides: Any
) -> Event:
    """Read an event and apply ``overrides`` keyed by paths with ``__`` between levels, such as
    ``requestContext__identity__userArn=None``. Overriding ``queryStringParameters`` or
    ``headers`` also sets its multi-value twin unless that is overridden too (API Gateway keeps
    the two consistent)."""
    event = cast(Event, json.loads(event_path(name).read_text(encoding="utf-8")))
    if secret_arn or secret_name:
        arn = secret_arn or PLACEHOLDER_SECRET_ARN
        name = secret_name or arn.split(":secret:")[-1].rsplit("-", 1)[0]
        event = substitute_secret(event, arn, name)
    for path, value in overrides.items():
        if path in _TWIN and _TWIN[path] not in overrides:
            event[path] = dict(value) if value else None
            event[_TWIN[path]] = {k: [v] for k, v in value.items()} if value else None
            continue
        *parents, leaf = path.split("__")
        node = event
        for key in parents:
            node[key] = node[key] if isinstance(node.get(key), dict) else {}
            node = node[key]
        node[leaf] = copy.deepcopy(value)
    return event
