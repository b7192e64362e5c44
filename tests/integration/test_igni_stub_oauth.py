"""The Igni stub's issue-13 switches, over HTTP: how it sends `expires_in`, opaque tokens,
which client authentications it accepts (form or HTTP Basic) and what it records of each call.

Kept apart from test_local_tools.py so that they move with the stub's issue-13 additions
(config keys expires_in_style, token_format, auth_methods; call fields audience, form_fields,
auth_scheme) wherever the stub goes.
"""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
import urllib3

from local.igni_stub import StubProcess, basic_credentials, decode_jwt_segment

HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False)
HEADERS = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}


def basic(client_id: str, client_secret: str) -> str:
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def post(
    stub: StubProcess, fields: dict[str, str], authorization: str | None = None
) -> urllib3.BaseHTTPResponse:
    headers = dict(HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    return HTTP.request(
        "POST", stub.token_url, body=urllib.parse.urlencode(fields), headers=headers
    )


def form_auth(stub: StubProcess, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": stub.client_id,
        "client_secret": stub.client_secret,
        **extra,
    }


@pytest.mark.parametrize(
    ("style", "sent"),
    [("int", 600), ("string", "600"), ("float", 600.5), ("omit", None)],
)
def test_stub_sends_expires_in_in_the_configured_style(
    igni_stub: StubProcess, style: str, sent: object
) -> None:
    # Given a 600 s lifetime sent in this style
    igni_stub.configure(lifetime=600, expires_in_style=style)
    # When a token is asked for
    answer = post(igni_stub, form_auth(igni_stub)).json()
    # Then expires_in is sent that way (or not at all), and the JWT's exp still says 600 s
    assert answer.get("expires_in") == sent
    assert ("expires_in" in answer) is (sent is not None)
    claims = decode_jwt_segment(answer["access_token"], 1)
    assert claims["exp"] - claims["iat"] == 600


def test_stub_issues_opaque_tokens_on_request(igni_stub: StubProcess) -> None:
    # Given opaque tokens and no expires_in
    igni_stub.configure(token_format="opaque", expires_in_style="omit")
    # When a token is asked for
    answer = post(igni_stub, form_auth(igni_stub)).json()
    # Then it is no JWT (nothing to read an exp from)
    assert answer["access_token"].count(".") != 2
    assert "expires_in" not in answer


def test_stub_accepts_both_client_authentications_by_default(igni_stub: StubProcess) -> None:
    # When one request authenticates in the form, another with HTTP Basic
    by_form = post(igni_stub, form_auth(igni_stub, audience="https://api.example"))
    by_basic = post(
        igni_stub,
        {"grant_type": "client_credentials"},
        basic(igni_stub.client_id, igni_stub.client_secret),
    )
    # Then both get a token
    assert (by_form.status, by_basic.status) == (200, 200)
    # And the calls record the field names, the audience and the scheme, never a credential
    calls = igni_stub.calls()
    assert [(c["client_id"], c["auth_scheme"], c["form_fields"], c["audience"]) for c in calls] == [
        (
            igni_stub.client_id,
            None,
            ["audience", "client_id", "client_secret", "grant_type"],
            "https://api.example",
        ),
        (igni_stub.client_id, "Basic", ["grant_type"], None),
    ]
    assert igni_stub.client_secret not in json.dumps(calls)
    encoded = basic(igni_stub.client_id, igni_stub.client_secret).split()[1]
    assert encoded not in json.dumps(calls)


def test_a_basic_only_stub_challenges_a_form_authenticated_request(
    igni_stub: StubProcess,
) -> None:
    # Given a server that accepts HTTP Basic only
    igni_stub.configure(auth_methods=["client_secret_basic"])
    # When the client authenticates in the form, as Igni's document shows
    response = post(igni_stub, form_auth(igni_stub))
    # Then it is 401 invalid_client with a Basic challenge
    assert response.status == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="igni"'
    # And with HTTP Basic it gets a token
    ok = post(
        igni_stub,
        {"grant_type": "client_credentials"},
        basic(igni_stub.client_id, igni_stub.client_secret),
    )
    assert ok.status == 200, ok.data
    assert [(c["status"], c["auth_scheme"]) for c in igni_stub.calls()] == [
        (401, None),
        (200, "Basic"),
    ]


def test_a_post_only_stub_refuses_basic_and_the_default_stub_challenges_nobody(
    igni_stub: StubProcess,
) -> None:
    # Given the default stub (both methods): a wrong secret in the form gets no challenge,
    # as Igni's (Passport) answer has none
    wrong = post(igni_stub, form_auth(igni_stub) | {"client_secret": "wrong"})
    assert wrong.status == 401
    assert "WWW-Authenticate" not in wrong.headers
    # When the server accepts the form only, Basic is refused
    igni_stub.configure(auth_methods=["client_secret_post"])
    refused = post(
        igni_stub,
        {"grant_type": "client_credentials"},
        basic(igni_stub.client_id, igni_stub.client_secret),
    )
    assert refused.status == 401
    assert refused.json()["error"] == "invalid_client"


def test_a_request_using_both_methods_is_400(igni_stub: StubProcess) -> None:
    # When a request carries the secret both in the form and in a Basic header
    response = post(
        igni_stub, form_auth(igni_stub), basic(igni_stub.client_id, igni_stub.client_secret)
    )
    # Then it is refused (RFC 6749 2.3: one method per request)
    assert response.status == 400
    assert response.json()["error"] == "invalid_request"


def test_stub_decodes_form_urlencoded_basic_credentials(igni_stub: StubProcess) -> None:
    # Given a client whose id and secret hold ':', '%', '+', a space and non-ASCII text
    client_id, secret = "id:%+ é", "s:%+ ß/ü"
    igni_stub.configure(clients={client_id: secret}, auth_methods=["client_secret_basic"])
    # When it authenticates with HTTP Basic
    response = post(igni_stub, {"grant_type": "client_credentials"}, basic(client_id, secret))
    # Then the stub reads back exactly that id and secret
    assert response.status == 200, response.data
    assert igni_stub.calls()[0]["client_id"] == client_id
    assert basic_credentials(basic(client_id, secret)) == (client_id, secret)


@pytest.mark.parametrize(
    "update",
    [
        {"expires_in_style": "hex"},
        {"token_format": "jwe"},
        {"auth_methods": []},
        {"auth_methods": ["private_key_jwt"]},
        {"auth_methods": "client_secret_basic"},
    ],
)
def test_stub_refuses_an_unknown_oauth_setting(
    igni_stub: StubProcess, update: dict[str, object]
) -> None:
    with pytest.raises(RuntimeError, match="400"):
        igni_stub.configure(**update)


def test_reset_restores_the_oauth_settings(igni_stub: StubProcess) -> None:
    # Given every issue-13 switch turned
    igni_stub.configure(
        expires_in_style="omit", token_format="opaque", auth_methods=["client_secret_basic"]
    )
    # When the stub is reset
    igni_stub.reset()
    # Then a form-authenticated request gets a JWT with an integer expires_in again
    answer = post(igni_stub, form_auth(igni_stub)).json()
    assert isinstance(answer["expires_in"], int)
    assert answer["access_token"].count(".") == 2
