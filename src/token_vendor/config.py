"""Configuration: a frozen dataclass parsed from the environment once, on first use."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from token_vendor.errors import ConfigurationError
from token_vendor.igni.token_url import WORKSPACE_NAME, validate_token_url

DEFAULT_PROFILE = "default"
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
_N = TypeVar("_N", int, float)
_PROFILE_FIELDS = frozenset({"secret_id", "workspace", "token_url", "scope", "audience"})
_PROFILE_KEYS = _PROFILE_FIELDS | {"token_endpoint_auth_method", "default_expires_in", "resource"}
# RFC 8707 resource indicators a profile may ask for (each sent as a `resource` form field).
MAX_RESOURCES = 10
MAX_RESOURCE_LENGTH = 2048
# How the client authenticates at the token endpoint (RFC 6749 section 2.3.1): in the form body,
# as Igni's document shows, or with HTTP Basic, which every RFC 6749 server must accept.
CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105  # nosec B105 - a method name
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105  # nosec B105 - a method name
AUTH_METHODS = (CLIENT_SECRET_POST, CLIENT_SECRET_BASIC)
# The longest lifetime believed from Igni: 10 years of 365 days (315,360,000 s). Longer is a
# broken or hostile answer, and would overflow the float arithmetic of expiry times.
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
# The lifetime assumed when Igni announces none (RFC 6749 5.1 only RECOMMENDS expires_in) and
# the token carries no usable JWT exp; a shorter one than any configured default is pointless.
DEFAULT_EXPIRES_IN = 3600
MIN_DEFAULT_EXPIRES_IN = 60
# The longest the fleet holds back after failed refreshes, and the longest an upstream
# Retry-After is believed: past it Igni is asked again.
DEFAULT_REFRESH_BACKOFF_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Profile:
    """One Igni credential set: where its secret lives and how to exchange it."""

    name: str
    secret_id: str
    workspace: str | None = None
    token_url: str | None = None
    scope: str | None = None
    audience: str | None = None
    token_endpoint_auth_method: str = CLIENT_SECRET_POST
    default_expires_in: int = DEFAULT_EXPIRES_IN
    # RFC 8707 resource indicators: absolute URIs, in the order given.
    resource: tuple[str, ...] = ()


@dataclass(frozen=True)
class Freshness:
    """When a cached token is refreshed ahead of expiry and when it may no longer be vended."""

    refresh_fraction: float = 0.75
    min_remaining_seconds: int = 300
    min_remaining_fraction: float = 0.10


@dataclass(frozen=True)
class Config:
    """Everything the function reads from its environment."""

    profiles: Mapping[str, Profile]
    table_name: str
    kms_key_id: str | None = None
    freshness: Freshness = field(default_factory=Freshness)
    secret_cache_seconds: float = 30.0
    memory_revalidate_seconds: float = 30.0
    auth_failure_cache_seconds: int = 60
    forced_refresh_interval_seconds: int = 30
    refresh_backoff_base_seconds: float = 2.0
    refresh_backoff_max_seconds: float = DEFAULT_REFRESH_BACKOFF_MAX_SECONDS
    lease_seconds: float = 15.0
    igni_connect_timeout: float = 3.0
    igni_read_timeout: float = 10.0
    igni_max_attempts: int = 3
    aws_connect_timeout: float = 1.0
    aws_read_timeout: float = 2.0
    aws_max_attempts: int = 3
    # The re-checks of a token already at hand: one short attempt, then a pause if it failed.
    recheck_timeout_seconds: float = 1.0
    recheck_pause_seconds: float = 10.0

    def profile(self, name: str) -> Profile | None:
        return self.profiles.get(name)


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Parse the environment; raise ConfigurationError naming what is wrong."""
    env = os.environ if env is None else env
    table_name = env.get("TOKEN_TABLE_NAME", "").strip()
    if not table_name:
        raise ConfigurationError("TOKEN_TABLE_NAME is not set")
    profiles = _load_profiles(env)
    defaults = Freshness()
    freshness = Freshness(
        refresh_fraction=_float(
            env, "TOKEN_REFRESH_FRACTION", defaults.refresh_fraction, 0.1, 0.95
        ),
        min_remaining_seconds=_int(
            env, "TOKEN_MIN_REMAINING_SECONDS", defaults.min_remaining_seconds, 0, 86400
        ),
        min_remaining_fraction=_float(
            env, "TOKEN_MIN_REMAINING_FRACTION", defaults.min_remaining_fraction, 0.0, 0.5
        ),
    )
    if freshness.refresh_fraction > 1 - freshness.min_remaining_fraction:
        raise ConfigurationError(
            "TOKEN_REFRESH_FRACTION must leave room before TOKEN_MIN_REMAINING_FRACTION"
        )
    return Config(
        profiles=profiles,
        table_name=table_name,
        kms_key_id=env.get("TOKEN_KMS_KEY_ID", "").strip() or None,
        freshness=freshness,
        **_settings(env),
    )


# The numeric settings: Config field -> (environment variable, lowest, highest). Defaults are
# the fields' own; an int default makes a whole-number setting.
_SETTINGS: dict[str, tuple[str, float, float]] = {
    # The secret is never cached for longer than 5 minutes, whatever is configured.
    "secret_cache_seconds": ("SECRET_CACHE_SECONDS", 0.0, 300.0),
    # Rotation must reach every environment within 60 s: memory is re-checked more often.
    "memory_revalidate_seconds": ("MEMORY_REVALIDATE_SECONDS", 0.0, 60.0),
    "auth_failure_cache_seconds": ("AUTH_FAILURE_CACHE_SECONDS", 0, 3600),
    "forced_refresh_interval_seconds": ("FORCED_REFRESH_INTERVAL_SECONDS", 0, 3600),
    "refresh_backoff_base_seconds": ("REFRESH_BACKOFF_BASE_SECONDS", 0.1, 60.0),
    "refresh_backoff_max_seconds": ("REFRESH_BACKOFF_MAX_SECONDS", 1.0, 3600.0),
    # Within API Gateway's 29 s.
    "lease_seconds": ("LEASE_SECONDS", 1.0, 28.0),
    "igni_connect_timeout": ("IGNI_CONNECT_TIMEOUT", 0.1, 3.0),
    "igni_read_timeout": ("IGNI_READ_TIMEOUT", 0.1, 10.0),
    "igni_max_attempts": ("IGNI_MAX_ATTEMPTS", 1, 5),
    "aws_connect_timeout": ("AWS_CONNECT_TIMEOUT", 0.1, 5.0),
    "aws_read_timeout": ("AWS_READ_TIMEOUT", 0.1, 10.0),
    "aws_max_attempts": ("AWS_MAX_ATTEMPTS", 1, 5),
    "recheck_timeout_seconds": ("RECHECK_TIMEOUT_SECONDS", 0.1, 5.0),
    "recheck_pause_seconds": ("RECHECK_PAUSE_SECONDS", 0.0, 300.0),
}
_FIELD_DEFAULTS: dict[str, object] = {
    field.name: field.default for field in dataclasses.fields(Config) if field.name in _SETTINGS
}


def _settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The _SETTINGS fields as `env` sets them, else as the Config fields default them."""
    values: dict[str, Any] = {}
    for name, (variable, low, high) in _SETTINGS.items():
        default = _FIELD_DEFAULTS[name]
        if isinstance(default, int):
            values[name] = _int(env, variable, default, int(low), int(high))
        elif isinstance(default, float):
            values[name] = _float(env, variable, default, low, high)
    return values


def same_secret(configured: str, other: str) -> bool:
    """Whether two references (names or ARNs, full or partial) name the same secret."""
    return configured == other or _secret_name(configured) == _secret_name(other)


def _secret_name(ref: str) -> str:
    if ref.startswith("arn:") and ":secret:" in ref:
        return _ARN_SUFFIX.sub("", ref.split(":secret:", 1)[1])
    return ref


def profile_for_secret(secret_id: str, env: Mapping[str, str] | None = None) -> Profile:
    """The profile whose secret this is (from IGNI_PROFILES), else the default profile's
    settings (IGNI_WORKSPACE, IGNI_TOKEN_URL, IGNI_SCOPE, IGNI_AUDIENCE, ...) for it: how the
    vendor exchanges it."""
    env = os.environ if env is None else env
    extra = {key: value for key, value in env.items() if key == "IGNI_PROFILES"}
    if extra:
        for profile in _load_profiles(extra).values():
            if same_secret(profile.secret_id, secret_id):
                return profile
    return _default_profile(secret_id, env)


def _default_profile(secret_id: str, env: Mapping[str, str]) -> Profile:
    """The default profile: its secret and the IGNI_* variables, as a profile entry would say."""
    entry: dict[str, object] = {
        "secret_id": secret_id,
        "workspace": env.get("IGNI_WORKSPACE", ""),
        "token_url": env.get("IGNI_TOKEN_URL", ""),
        "scope": env.get("IGNI_SCOPE", ""),
        "audience": env.get("IGNI_AUDIENCE", ""),
    }
    method = env.get("IGNI_TOKEN_ENDPOINT_AUTH_METHOD", "").strip()
    if method:
        if method not in AUTH_METHODS:
            # The value is not echoed: whatever was typed there stays out of error bodies.
            raise ConfigurationError(
                "IGNI_TOKEN_ENDPOINT_AUTH_METHOD must be client_secret_post or client_secret_basic"
            )
        entry["token_endpoint_auth_method"] = method
    entry["default_expires_in"] = _int(
        env, "IGNI_DEFAULT_EXPIRES_IN", DEFAULT_EXPIRES_IN, MIN_DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN
    )
    resource = env.get("IGNI_RESOURCE", "").strip()
    if resource:
        entry["resource"] = _resource_setting(resource)
    return _profile(DEFAULT_PROFILE, entry)


def _resource_setting(raw: str) -> object:
    """IGNI_RESOURCE: one absolute URI, several separated by spaces, or a JSON array."""
    if raw.startswith("["):
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigurationError("IGNI_RESOURCE is not a valid JSON array") from None
    return raw.split()


def _load_profiles(env: Mapping[str, str]) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    secret_id = env.get("IGNI_SECRET_ID", "").strip()
    if secret_id:
        profiles[DEFAULT_PROFILE] = _default_profile(secret_id, env)
    raw = env.get("IGNI_PROFILES", "").strip()
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ConfigurationError("IGNI_PROFILES is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigurationError("IGNI_PROFILES must be a JSON object of profile name -> {...}")
        for name, entry in parsed.items():
            if name == DEFAULT_PROFILE:
                # GET /token/default would be a second path to the default profile, past an
                # IAM Deny on GET/token for a caller allowed GET/token/*.
                raise ConfigurationError(
                    "IGNI_PROFILES: the profile name 'default' is reserved (the default profile "
                    "is defined by IGNI_SECRET_ID and served at /token only)"
                )
            profiles[name] = _profile(name, entry)
    if not profiles:
        raise ConfigurationError("IGNI_SECRET_ID is not set and IGNI_PROFILES defines no profile")
    return profiles


def _profile(name: str, entry: object) -> Profile:
    if not PROFILE_NAME.match(name):
        raise ConfigurationError(
            f"profile '{name[:64]}': name must be 1-64 letters, digits, '.', '_' or '-'"
        )
    if not isinstance(entry, dict):
        raise ConfigurationError(f"profile '{name}': must be a JSON object")
    unknown = set(entry) - _PROFILE_KEYS
    if unknown:
        raise ConfigurationError(f"profile '{name}': unknown field '{sorted(unknown)[0]}'")
    values: dict[str, str | None] = {}
    for key in _PROFILE_FIELDS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"profile '{name}': field '{key}' must be a string")
        values[key] = value.strip() if value and value.strip() else None
    secret = values["secret_id"]
    if not secret:
        raise ConfigurationError(f"profile '{name}': field 'secret_id' is required")
    token_url = values["token_url"]
    if token_url:
        validate_token_url(token_url, name)
    workspace = values["workspace"]
    if workspace and not WORKSPACE_NAME.match(workspace):
        raise ConfigurationError(f"profile '{name}': field 'workspace' is not a valid host label")
    return Profile(
        name=name,
        secret_id=secret,
        workspace=workspace,
        token_url=token_url,
        scope=values["scope"],
        audience=values["audience"],
        token_endpoint_auth_method=_profile_auth_method(name, entry),
        default_expires_in=_profile_default_expires_in(name, entry),
        resource=_profile_resource(name, entry.get("resource")),
    )


def _profile_resource(name: str, value: object) -> tuple[str, ...]:
    """RFC 8707 section 2: each resource an absolute URI without a fragment."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_RESOURCES:
        raise ConfigurationError(
            f"profile '{name}': field 'resource' must be an absolute URI or a list of 1 to "
            f"{MAX_RESOURCES} of them"
        )
    resources: list[str] = []
    for item in values:
        if not isinstance(item, str) or not _is_resource_uri(item):
            raise ConfigurationError(
                f"profile '{name}': field 'resource' must hold absolute URIs (scheme://..., "
                f"printable ASCII, no fragment, at most {MAX_RESOURCE_LENGTH} characters)"
            )
        resources.append(item)
    return tuple(resources)


def _is_resource_uri(value: str) -> bool:
    if not value or len(value) > MAX_RESOURCE_LENGTH or "#" in value:
        return False
    if any(not "!" <= char <= "~" for char in value):
        return False
    scheme, sep, rest = value.partition(":")
    return bool(sep and rest and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme))


def _profile_auth_method(name: str, entry: Mapping[str, object]) -> str:
    method = entry.get("token_endpoint_auth_method")
    if method is None:
        return CLIENT_SECRET_POST
    if not isinstance(method, str) or method.strip() not in AUTH_METHODS:
        raise ConfigurationError(
            f"profile '{name}': field 'token_endpoint_auth_method' must be client_secret_post "
            "or client_secret_basic"
        )
    return method.strip()


def _profile_default_expires_in(name: str, entry: Mapping[str, object]) -> int:
    value = entry.get("default_expires_in")
    if value is None:
        return DEFAULT_EXPIRES_IN
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_DEFAULT_EXPIRES_IN <= value <= MAX_EXPIRES_IN
    ):
        raise ConfigurationError(
            f"profile '{name}': field 'default_expires_in' must be a whole number of seconds "
            f"from {MIN_DEFAULT_EXPIRES_IN} to {MAX_EXPIRES_IN}"
        )
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, parse=float, kind="a number")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, parse=int, kind="a whole number")


def _number(
    env: Mapping[str, str],
    name: str,
    default: _N,
    low: _N,
    high: _N,
    *,
    parse: Callable[[str], _N],
    kind: str,
) -> _N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {kind}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}")
    return value
