"""Where the client credentials may be sent: the token URL of a profile, checked with the parser
of the client that sends (urllib3's), https only except to a loopback host."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from token_vendor.errors import ConfigurationError

if TYPE_CHECKING:
    from token_vendor.config import Profile

# A URL template, not a password (ruff S105, bandit B105).
IGNI_TOKEN_URL_TEMPLATE = "https://{workspace}.igni.co/api/v1/oauth2/token"  # noqa: S105  # nosec B105
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def token_url_for(profile: Profile, secret_workspace: str | None) -> str:
    """The token URL of a profile: its override, else built from the workspace."""
    if profile.token_url:
        return validate_token_url(profile.token_url, profile.name)
    workspace = profile.workspace or secret_workspace
    if not workspace:
        raise ConfigurationError(
            f"profile '{profile.name}': no Igni workspace; set IGNI_WORKSPACE, "
            "a 'workspace' in the secret, or IGNI_TOKEN_URL"
        )
    if not WORKSPACE_NAME.match(workspace):
        raise ConfigurationError(f"profile '{profile.name}': workspace is not a valid host label")
    return IGNI_TOKEN_URL_TEMPLATE.format(workspace=workspace)


def validate_token_url(url: str, profile_name: str) -> str:
    """Accept https anywhere, plain http only on a loopback host (local runs and tests)."""
    problem = token_url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"profile '{profile_name}': token URL {problem}")
    return url


def token_url_problem(url: str) -> str | None:
    """Why urllib3 must not send credentials to `url`, or None when it may.

    The URL is read with urllib3's own parser, the one that sends: `urllib.parse` reads
    `http://a\\@127.0.0.1/` as host 127.0.0.1 where urllib3 connects to `a`. Userinfo (any
    `@`), backslashes and anything but printable ASCII are refused outright, so that no two
    parsers can disagree about the host.
    """
    if not url or any(not "!" <= char <= "~" for char in url):
        return "must be printable ASCII without spaces or control characters"
    if "\\" in url:
        return "must not contain a backslash"
    if "@" in url:
        return "must not contain '@' (userinfo)"
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "cannot be parsed"
    if parts.auth is not None:
        return "must not contain userinfo"
    if not parts.host:
        return "has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(parts.host):
        return None
    return "must use https (plain http is allowed for loopback hosts only)"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        # urllib3 keeps the brackets of an IPv6 literal.
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False
