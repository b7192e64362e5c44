"""Who may call ``make local``'s API: SigV4 credentials, and a local stand-in for IAM policies.

API Gateway (``AWS_IAM``) refuses a request whose SigV4 signature is missing, malformed, wrong or
stale, and then asks IAM whether the caller may ``execute-api:Invoke`` the method. Locally:

* the signature is checked by :class:`local.sigv4.LocalSigV4Verifier` against the credentials of
  ``make local``'s own environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), or the
  documented test credentials when those are unset (:func:`local.sigv4.local_credentials`);
* IAM is imitated with a map of caller -> allowed methods, from ``LOCAL_IAM_POLICY`` (the path of
  a JSON file) or ``LOCAL_IAM_POLICY_JSON`` (the JSON itself). Without either, every caller whose
  signature verifies is allowed everything, as a caller with ``execute-api:Invoke`` on ``*``.

The policy is either the map alone::

    {"AKIAIGNILOCALTESTKEY": ["GET/token", "POST/token/refresh"],
     "arn:aws:iam::123456789012:user/analytics": ["GET/token/analytics"]}

or the map under ``"allow"``, with extra callers (their own access keys) under ``"callers"``::

    {"callers": {"AKIALOCALANALYTICS01": {"secret_key": "analytics-local-secret",
                                          "user_arn": "arn:aws:iam::123456789012:user/analytics"}},
     "allow": {"AKIAIGNILOCALTESTKEY": ["*"],
               "arn:aws:iam::123456789012:user/analytics": ["GET/token/analytics",
                                                            "POST/token/analytics/refresh"]}}

A caller is named by access key id or user ARN (``"*"``: every caller not named otherwise); an
allowed method is ``METHOD/resource/path`` (``*`` matches anything, ``/`` included) or a whole
``arn:aws:execute-api:...`` ARN (see :func:`local.sigv4.authorize`). A caller the map does not
name is denied, like an IAM principal without a policy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.api_server import HttpRequest, HttpResponse, IdentityResolver
from local.sigv4 import (
    LOCAL_ACCOUNT_ID,
    AuthError,
    LocalCredential,
    LocalSigV4Verifier,
    local_credentials,
)

__all__ = [
    "POLICY_FILE_VAR",
    "POLICY_JSON_VAR",
    "LocalAuth",
    "LocalPolicy",
    "PolicyError",
    "load_policy",
    "local_auth",
    "parse_policy",
    "sigv4_resolver",
]

POLICY_FILE_VAR = "LOCAL_IAM_POLICY"
POLICY_JSON_VAR = "LOCAL_IAM_POLICY_JSON"

# AWS access key ids: 16 to 128 upper-case letters and digits.
_ACCESS_KEY = re.compile(r"^[A-Z0-9]{16,128}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:\S+$")
_CALLER_FIELDS = frozenset({"secret_key", "user_arn", "session_token", "user_id"})


class PolicyError(ValueError):
    """The local IAM policy cannot be used; the message names the variable and the entry."""


@dataclass(frozen=True)
class LocalPolicy:
    """The local IAM policy: who may invoke what, and callers with their own access keys."""

    allowed: dict[str, tuple[str, ...]]
    callers: dict[str, LocalCredential] = field(default_factory=dict)
    source: str = ""


def _caller(key: str, entry: object, where: str) -> LocalCredential:
    if not _ACCESS_KEY.match(key):
        raise PolicyError(f"{where}: callers: {key!r} is not an access key id (A-Z, 0-9, 16+)")
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: callers: {key}: must be an object with a secret_key")
    unknown = set(entry) - _CALLER_FIELDS
    if unknown:
        raise PolicyError(f"{where}: callers: {key}: unknown field {sorted(unknown)[0]!r}")
    for name in _CALLER_FIELDS:
        if name in entry and not isinstance(entry[name], str):
            raise PolicyError(f"{where}: callers: {key}: {name} must be a string")
    secret = entry.get("secret_key")
    if not secret:
        raise PolicyError(f"{where}: callers: {key}: secret_key is required")
    arn = entry.get("user_arn") or f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:user/{key.lower()}"
    if not _ARN.match(arn):
        raise PolicyError(f"{where}: callers: {key}: user_arn {arn!r} is not an IAM or STS ARN")
    return LocalCredential(
        secret_key=secret,
        session_token=entry.get("session_token") or None,
        user_arn=arn,
        user_id=entry.get("user_id") or None,
    )


def _allowed(raw: object, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must map a caller to the methods it may invoke")
    allowed: dict[str, tuple[str, ...]] = {}
    for caller, patterns in raw.items():
        if not isinstance(caller, str) or not caller:
            raise PolicyError(f"{where}: a caller must be an access key id, a user ARN or '*'")
        listed = [patterns] if isinstance(patterns, str) else patterns
        if not isinstance(listed, list) or not all(isinstance(p, str) and p for p in listed):
            raise PolicyError(
                f"{where}: {caller}: must be a list of methods such as "
                '"GET/token", "POST/token/*/refresh" or "*"'
            )
        allowed[caller] = tuple(listed)
    return allowed


def parse_policy(document: object, source: str) -> LocalPolicy:
    """A policy from its parsed JSON; PolicyError naming ``source`` and the entry if unusable."""
    if isinstance(document, dict) and ("allow" in document or "callers" in document):
        unknown = set(document) - {"allow", "callers"}
        if unknown:
            raise PolicyError(f"{source}: unknown top-level field {sorted(unknown)[0]!r}")
        raw_callers = document.get("callers") or {}
        if not isinstance(raw_callers, dict):
            raise PolicyError(f"{source}: callers must map an access key id to its secret_key")
        callers = {key: _caller(key, entry, source) for key, entry in raw_callers.items()}
        return LocalPolicy(_allowed(document.get("allow", {}), source), callers, source)
    return LocalPolicy(_allowed(document, source), {}, source)


def load_policy(environ: Mapping[str, str] | None = None) -> LocalPolicy | None:
    """The policy named by LOCAL_IAM_POLICY / LOCAL_IAM_POLICY_JSON; None when neither is set."""
    env = os.environ if environ is None else environ
    path = env.get(POLICY_FILE_VAR, "").strip()
    inline = env.get(POLICY_JSON_VAR, "").strip()
    if path and inline:
        raise PolicyError(f"set {POLICY_FILE_VAR} or {POLICY_JSON_VAR}, not both")
    if path:
        source = f"{POLICY_FILE_VAR}={path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    elif inline:
        source, text = POLICY_JSON_VAR, inline
    else:
        return None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{source}: not valid JSON: {exc}") from None
    return parse_policy(document, source)


@dataclass(frozen=True)
class LocalAuth:
    """What ``make local`` accepts (credentials) and allows (policy), and how to say so."""

    credentials: dict[str, LocalCredential]
    allowed: dict[str, tuple[str, ...]] | None
    description: list[str]

    def verifier(self, *, region: str, api_id: str, stage: str) -> LocalSigV4Verifier:
        return LocalSigV4Verifier(
            self.credentials, region=region, allowed=self.allowed, api_id=api_id, stage=stage
        )

    def state(self) -> dict[str, Any]:
        """For .local-state/env.json: access key ids, ARNs and the policy; no secret key."""
        return {
            "callers": {key: cred.user_arn for key, cred in self.credentials.items()},
            "iam_policy": None
            if self.allowed is None
            else {k: list(v) for k, v in self.allowed.items()},
        }


def _named(allowed: Mapping[str, tuple[str, ...]], key: str, cred: LocalCredential) -> bool:
    return key in allowed or cred.user_arn in allowed or "*" in allowed


def local_auth(environ: Mapping[str, str] | None = None) -> LocalAuth:
    """Credentials and policy for ``make local``, from its environment.

    Call it before moto's fake credentials are put in ``os.environ``.
    """
    env = os.environ if environ is None else environ
    credentials, sentence = local_credentials(env)
    lines = [sentence]
    policy = load_policy(env)
    if policy is None:
        lines.append(
            f"No local IAM policy ({POLICY_FILE_VAR} / {POLICY_JSON_VAR} unset): a caller whose "
            "signature verifies may invoke every method."
        )
        return LocalAuth(credentials, None, lines)
    for key, cred in policy.callers.items():
        if key in credentials:
            raise PolicyError(f"{policy.source}: callers: {key} is already accepted")
        credentials[key] = cred
        lines.append(f"Also accepting {key} (from {policy.source}) as {cred.user_arn}.")
    lines.append(f"Local IAM policy from {policy.source}:")
    lines.extend(f"  {caller}: {', '.join(methods)}" for caller, methods in policy.allowed.items())
    for key, cred in credentials.items():
        if not _named(policy.allowed, key, cred):
            lines.append(f"  (the policy names neither {key} nor {cred.user_arn}: all denied)")
    return LocalAuth(credentials, policy.allowed, lines)


def sigv4_resolver(verifier: LocalSigV4Verifier) -> IdentityResolver:
    """An ApiServer identity resolver: API Gateway's 403 for a refused request, else the caller."""

    def resolve(request: HttpRequest) -> dict[str, Any] | HttpResponse:
        result = verifier.check_http(request)
        if isinstance(result, AuthError):
            return HttpResponse(result.status, result.header_pairs, result.body_json.encode())
        return dict(result.as_request_context_identity())

    return resolve
