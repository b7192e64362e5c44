"""Keep credentials out of what the client says: exceptions, log lines and the CLI's stderr.

API Gateway's signature-mismatch answer quotes the canonical request it computed, session token
included; its other 403 answers may echo the ``Authorization`` header (access key id, signature).
Anything a server or a library says is passed through :func:`redact` before it is shown.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MESSAGE_CHARS", "redact"]

MAX_MESSAGE_CHARS: Final = 300
REDACTED: Final = "[redacted]"
SIGNING_DETAILS_REMOVED: Final = "[signing details removed]"  # matches no pattern: idempotent

# Everything from these words on is the canonical request or the string to sign.
_CANONICAL = re.compile(
    r"(the\s+)?(canonical\s+(string|request)|string[\s-]+to[\s-]+sign)", re.IGNORECASE
)
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # x-amz-security-token:VALUE (a header line) or X-Amz-Security-Token=VALUE (a query string)
    (re.compile(r"(x-amz-security-token)\s*[:=]\s*[^\s,;&'\"]*", re.IGNORECASE), r"\1=" + REDACTED),
    (
        re.compile(r"(x-amz-signature|signature)\s*=\s*[^\s,;&'\"]*", re.IGNORECASE),
        r"\1=" + REDACTED,
    ),
    (
        re.compile(r"(x-amz-credential|credential)\s*=\s*[^\s,;&'\"]*", re.IGNORECASE),
        r"\1=" + REDACTED,
    ),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), r"\1 " + REDACTED),
    # Proxy or endpoint URLs with a user and password in them.
    (re.compile(r"(\w+://)[^/\s@]+@"), r"\1" + REDACTED + "@"),
    # Access key ids (long-term AKIA, temporary ASIA) wherever they stand.
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b"), REDACTED),
    # A long unbroken run of base64 or hex is a token, a signature or a hash: never a word.
    (re.compile(r"[A-Za-z0-9+/=]{40,}"), REDACTED),
)
_WHITESPACE = re.compile(r"\s+")


def redact(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, without credentials, the canonical request, or control characters."""
    value = str(text)
    cut = _CANONICAL.search(value)
    if cut is not None:
        value = value[: cut.start()].rstrip() + " " + SIGNING_DETAILS_REMOVED
    value = "".join(c if c.isprintable() else " " for c in value)
    for pattern, replacement in _PATTERNS:
        value = pattern.sub(replacement, value)
    value = _WHITESPACE.sub(" ", value).strip()
    if len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return value
