"""Who may call ``make local``'s API: the accepted credentials, and IAM's ``execute-api:Invoke``
imitated by a map of caller -> methods from ``LOCAL_IAM_POLICY`` / ``LOCAL_IAM_POLICY_JSON``
(docs/local.md); without one, every caller whose signature verifies may invoke everything."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from local.gateway import sigv4
from local.gateway.sigv4 import AuthError, CallerIdentity, LocalCredential

POLICY_FILE_VAR = "LOCAL_IAM_POLICY"
POLICY_JSON_VAR = "LOCAL_IAM_POLICY_JSON"
_ACCESS_KEY = re.compile(r"^[A-Z0-9]{16,128}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:\S+$")
_CALLER_FIELDS = frozenset({"secret_key", "user_arn", "session_token", "user_id"})


def strip_stage(path: str, stage: str) -> str:
    """The API resource path of a request path: '/v1/token' and '/token' both give '/token'."""
    prefix = f"/{stage}/"
    return path[len(prefix) - 1 :] or "/" if f"{path}/".startswith(prefix) else path


# --- IAM's execute-api:Invoke, imitated -----------------------------------------------------


@dataclass(frozen=True)
class LocalSigV4Verifier:
    """The signature, then the policy: one :meth:`check` per request, as API Gateway does; what
    ``make local`` accepts and allows (``description`` says it in words)."""

    credentials: Mapping[str, str | LocalCredential]
    region: str = "us-east-1"
    allowed: Mapping[str, Iterable[str]] | None = None
    api_id: str = "local"
    stage: str = "v1"
    max_skew: int = sigv4.MAX_SKEW_SECONDS
    description: tuple[str, ...] = ()

    def verifier(self, **where: str) -> LocalSigV4Verifier:
        """This one for another ``region``, ``api_id`` or ``stage``."""
        return dataclasses.replace(self, **where)  # type: ignore[arg-type]

    def state(self) -> dict[str, Any]:
        """For .local-state/env.json: access key ids, ARNs and the policy; no secret key."""
        callers = {k: getattr(c, "user_arn", None) for k, c in self.credentials.items()}
        policy = None if self.allowed is None else {k: list(v) for k, v in self.allowed.items()}
        return {"callers": callers, "iam_policy": policy}

    def method_arn(self, method: str, resource: str, account_id: str) -> str:
        """``arn:aws:execute-api:REGION:ACCOUNT:API_ID/STAGE/METHOD/resource/path``."""
        arn = f"arn:aws:execute-api:{self.region}:{account_id}:{self.api_id}/{self.stage}"
        return f"{arn}/{method.upper()}/{resource.lstrip('/')}"

    def authorize(self, caller: CallerIdentity, method: str, resource: str) -> bool:
        """Would IAM allow ``execute-api:Invoke`` on the method (no policy: yes)? As in IAM, ``*``
        matches any characters (``/`` too), ``?`` one, case-sensitively."""
        if self.allowed is None:
            return True
        keys = (caller.access_key, caller.user_arn, "*")
        patterns = next((self.allowed[k] for k in keys if k in self.allowed), ())
        short = f"{method.upper()}/{resource.lstrip('/')}"
        full = self.method_arn(method, resource, caller.account_id)
        regexes = (re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns)
        return any(re.fullmatch(r, full if r.startswith("arn:") else short, re.S) for r in regexes)

    def not_authorized_error(self, caller: CallerIdentity, method: str, resource: str) -> AuthError:
        """API Gateway's 403 when IAM says no: capital ``Message``, the account masked."""
        arn = self.method_arn(method, resource, "********" + caller.account_id[-4:])
        message = f"User: {caller.user_arn} is not authorized to perform: execute-api:Invoke"
        return AuthError(f"{message} on resource: {arn}", "AccessDeniedException", 403, "Message")

    def check(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        headers: sigv4.Headers,
        body: bytes | None,
        *,
        source_ip: str = "127.0.0.1",
        now: datetime | float | None = None,
    ) -> CallerIdentity | AuthError:
        """The path (stage included) and query exactly as received: what the caller signed."""
        request = (method, raw_path, query_string, headers, body, self.credentials, self.region)
        result = sigv4.verify_request(
            *request, now=now, max_skew=self.max_skew, source_ip=source_ip
        )
        if isinstance(result, AuthError):
            return result
        resource = strip_stage(raw_path, self.stage)
        if not self.authorize(result, method, resource):
            return self.not_authorized_error(result, method, resource)
        return result


# --- make local's credentials and policy ----------------------------------------------------


def local_credentials(
    env: Mapping[str, str] = os.environ,
) -> tuple[dict[str, LocalCredential], str]:
    """The credentials ``make local`` accepts (the environment's, else the documented test
    ones, as ``IGNI_LOCAL_CALLER_ARN``), and a sentence saying which."""
    arn = env.get("IGNI_LOCAL_CALLER_ARN") or sigv4.DEFAULT_LOCAL_USER_ARN
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        token = env.get("AWS_SESSION_TOKEN") or None
        masked = f"{key[:4]}…{key[-4:]}" if len(key) > 8 else "****"
        return {key: LocalCredential(secret, session_token=token, user_arn=arn)}, (
            "Accepting SigV4 signatures made with the AWS credentials of this environment "
            f"(AWS_ACCESS_KEY_ID {masked}{', with a session token' if token else ''}) as {arn}."
        )
    key, secret = sigv4.LOCAL_TEST_ACCESS_KEY_ID, sigv4.LOCAL_TEST_SECRET_ACCESS_KEY
    return {key: LocalCredential(secret, user_arn=arn)}, (
        "No AWS credentials in this environment: accepting SigV4 signatures made with the "
        f"documented local test credentials AWS_ACCESS_KEY_ID={key} "
        f"AWS_SECRET_ACCESS_KEY={secret} as {arn} "
        "(igni-token uses them by itself against a loopback endpoint when it has no credentials)."
    )


class PolicyError(ValueError):
    """The local IAM policy cannot be used; the message names the variable and the entry."""


@dataclass(frozen=True)
class LocalPolicy:
    allowed: dict[str, tuple[str, ...]]
    callers: dict[str, LocalCredential] = field(default_factory=dict)
    source: str = ""


def _caller(key: str, entry: object, where: str) -> LocalCredential:
    where = f"{where}: callers: {key}"
    if not _ACCESS_KEY.match(key):
        raise PolicyError(f"{where}: {key!r} is not an access key id (A-Z, 0-9, 16+)")
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: must be an object with a secret_key")
    for name in sorted(entry):
        if name not in _CALLER_FIELDS:
            raise PolicyError(f"{where}: unknown field {name!r}")
        if not isinstance(entry[name], str):
            raise PolicyError(f"{where}: {name} must be a string")
    if not entry.get("secret_key"):
        raise PolicyError(f"{where}: secret_key is required")
    arn = entry.get("user_arn") or f"arn:aws:iam::{sigv4.LOCAL_ACCOUNT_ID}:user/{key.lower()}"
    if not _ARN.match(arn):
        raise PolicyError(f"{where}: user_arn {arn!r} is not an IAM or STS ARN")
    return LocalCredential(
        entry["secret_key"], entry.get("session_token") or None, arn, entry.get("user_id") or None
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
    if not (isinstance(document, dict) and ("allow" in document or "callers" in document)):
        return LocalPolicy(_allowed(document, source), {}, source)
    unknown = set(document) - {"allow", "callers"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level field {sorted(unknown)[0]!r}")
    raw_callers = document.get("callers") or {}
    if not isinstance(raw_callers, dict):
        raise PolicyError(f"{source}: callers must map an access key id to its secret_key")
    callers = {key: _caller(key, entry, source) for key, entry in raw_callers.items()}
    return LocalPolicy(_allowed(document.get("allow", {}), source), callers, source)


def load_policy(env: Mapping[str, str] = os.environ) -> LocalPolicy | None:
    """The policy named by LOCAL_IAM_POLICY / LOCAL_IAM_POLICY_JSON; None when neither is set."""
    path, inline = (env.get(name, "").strip() for name in (POLICY_FILE_VAR, POLICY_JSON_VAR))
    if path and inline:
        raise PolicyError(f"set {POLICY_FILE_VAR} or {POLICY_JSON_VAR}, not both")
    if not (path or inline):
        return None
    source = f"{POLICY_FILE_VAR}={path}" if path else POLICY_JSON_VAR
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8") if path else inline)
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PolicyError(f"{source}: not valid JSON: {exc}") from None
    return parse_policy(document, source)


LocalAuth = LocalSigV4Verifier  # make local's: from local_auth().verifier(...)


def local_auth(env: Mapping[str, str] = os.environ) -> LocalAuth:
    """Credentials and policy for ``make local``, from its environment (before moto's is set)."""
    credentials, sentence = local_credentials(env)
    lines = [sentence]
    policy = load_policy(env)
    if policy is None:
        lines.append(
            f"No local IAM policy ({POLICY_FILE_VAR} / {POLICY_JSON_VAR} unset): a caller whose "
            "signature verifies may invoke every method."
        )
        return LocalAuth(credentials, description=tuple(lines))
    for key, cred in policy.callers.items():
        if key in credentials:
            raise PolicyError(f"{policy.source}: callers: {key} is already accepted")
        credentials[key] = cred
        lines.append(f"Also accepting {key} (from {policy.source}) as {cred.user_arn}.")
    lines.append(f"Local IAM policy from {policy.source}:")
    lines.extend(f"  {caller}: {', '.join(methods)}" for caller, methods in policy.allowed.items())
    lines.extend(
        f"  (the policy names neither {key} nor {cred.user_arn}: all denied)"
        for key, cred in credentials.items()
        if not {key, cred.user_arn, "*"} & set(policy.allowed)
    )
    return LocalAuth(credentials, allowed=policy.allowed, description=tuple(lines))
