"""The client-credentials token request: the form and the client's authentication."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus, urlencode

from token_vendor.config import CLIENT_SECRET_BASIC


def token_request(
    client_id: str,
    client_secret: str,
    *,
    scope: str | None,
    audience: str | None,
    resource: tuple[str, ...],
    auth_method: str,
) -> tuple[str, dict[str, str]]:
    """The form body and headers of a client-credentials request; each RFC 8707 resource is a
    `resource` field of its own."""
    form: list[tuple[str, str]] = [("grant_type", "client_credentials")]
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    if auth_method == CLIENT_SECRET_BASIC:
        headers["Authorization"] = basic_authorization(client_id, client_secret)
    else:
        form += [("client_id", client_id), ("client_secret", client_secret)]
    if scope:
        form.append(("scope", scope))
    if audience:
        form.append(("audience", audience))
    form += [("resource", uri) for uri in resource]
    return urlencode(form), headers


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The Authorization header of client_secret_basic (RFC 6749 section 2.3.1): the id and the
    secret each form-urlencoded (UTF-8), joined by ':', then base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
