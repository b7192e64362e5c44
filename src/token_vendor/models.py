"""The data every layer shares: a token as the cache holds it, one version of the Igni client
credentials, the shared item's state, and the identities of tokens (fingerprints) and of
credential sets (cache keys). Nothing here does I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from token_vendor.config import Profile

# How many replaced tokens' fingerprints are remembered (the item's `prev_fps`, and memory):
# a caller still holding one may report it and is then served the current token.
RECENT_TOKENS = 8


@dataclass(frozen=True)
class CachedToken:
    """A token as both cache tiers hold it, with what is needed to judge its age."""

    access_token: str
    token_type: str
    issued_at: float
    expires_at: int
    secret_version: str | None

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.access_token)


def fingerprint(token: str) -> str:
    """A short, non-reversible identifier of a token or secret, safe for logs and comparisons."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Credentials:
    """One version of the Igni client credentials. The secret never appears in a repr."""

    client_id: str
    client_secret: str = field(repr=False)
    workspace: str | None
    version_id: str


def cache_key(profile: Profile) -> str:
    """Identifies a credential set and what is asked of it; holds nothing secret."""
    fields = [
        profile.secret_id,
        profile.token_url or "",
        profile.workspace or "",
        profile.scope or "",
    ]
    material = "\n".join(fields)
    if profile.resource:
        # Newer fields join the material only when set, so that the items of profiles without
        # them keep their key across a deploy. JSON, so that no scope text can imitate it (a
        # secret id never starts with '['); each form has its own length.
        material = json.dumps([*fields, profile.audience or "", ["resource", *profile.resource]])
    elif profile.audience:
        material = json.dumps([*fields, profile.audience])
    return "token#" + hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Record:
    """The shared state of one credential set as last read from DynamoDB."""

    token: CachedToken | None = None
    token_fingerprint: str | None = None
    lease_owner: str | None = None
    lease_until: float = 0.0
    backoff_until: float = 0.0
    failures: int = 0
    # The error code of the failure that set `backoff_until`: what callers get meanwhile.
    failure_code: str | None = None
    auth_failed_until: float = 0.0
    auth_failed_version: str | None = None
    forced_at: float = 0.0
    undecryptable: bool = False
    # Fingerprints of the tokens this item held before the current one, newest first.
    recent_fingerprints: tuple[str, ...] = ()

    def lease_held(self, now: float) -> bool:
        return self.lease_owner is not None and self.lease_until > now

    def vended(self, fingerprint: str) -> bool:
        """Whether the token with this fingerprint is, or recently was, this item's token."""
        return fingerprint == self.token_fingerprint or fingerprint in self.recent_fingerprints

    def succession(self) -> tuple[str, ...]:
        """`recent_fingerprints` once the current token is replaced."""
        current = (self.token_fingerprint,) if self.token_fingerprint else ()
        return (*current, *self.recent_fingerprints)[:RECENT_TOKENS]
