"""The same API through what callers use: the Python client, the igni-token CLI, curl --aws-sigv4.

A black box (see conftest.py). The CLI and curl get the target's credentials in their
environment, as a user's shell would hold them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import botocore.session
import pytest
from botocore.credentials import Credentials
from igni_token_client import Token, TokenClient, TokenVendorError

from tests.e2e.conftest import Target

UNKNOWN_PROFILE = "e2e-nobody"
NOT_CURRENT = "e2e-a-token-that-is-not-the-current-one"
TOOL_TIMEOUT_S = 60.0
IGNI_TOKEN = Path(sys.executable).parent / "igni-token"
# curl signs requests itself from 7.75 on.
CURL_SIGV4_SINCE = (7, 75)


def session_with(credentials: Credentials) -> botocore.session.Session:
    session = botocore.session.Session()
    session.set_credentials(credentials.access_key, credentials.secret_key, credentials.token)
    return session


def client_for(target: Target, credentials: Credentials | None = None, **kw: object) -> TokenClient:
    creds = credentials or target.credentials
    return TokenClient(
        target.base_url,
        region=target.region,
        session=session_with(creds),
        **kw,  # type: ignore[arg-type]
    )


def wrong_secret(target: Target) -> Credentials:
    creds = target.credentials
    return Credentials(creds.access_key, "not-the-secret-key", creds.token)


# -------------------------------------------------------------------------- Python client


def test_the_python_client_gets_tokens_and_reports_errors(target: Target) -> None:
    # When the client asks for the default token, with a min_ttl, and reports a stale one
    with client_for(target) as client:
        token = client.get_token()
        again = client.get_token(min_ttl=60)
        client.clear()
        current = client.invalidate(NOT_CURRENT)

    # Then each is a usable token, the current one for the stale report
    assert isinstance(token, Token)
    assert token.token_type == "Bearer"
    assert token.authorization == f"Bearer {token.access_token}"
    assert again.expires_in >= 60
    assert current.access_token

    # When it asks for an unknown profile, or signs with a wrong secret
    with (
        client_for(target, profile=UNKNOWN_PROFILE) as unknown,
        pytest.raises(TokenVendorError) as not_found,
    ):
        unknown.get_token()
    with (
        client_for(target, wrong_secret(target)) as wrong,
        pytest.raises(TokenVendorError) as forbidden,
    ):
        wrong.get_token()

    # Then the errors carry the status and the contract's code (or the client's own for 403)
    assert (not_found.value.status, not_found.value.error) == (404, "unknown_profile")
    assert (forbidden.value.status, forbidden.value.error) == (403, "gateway_forbidden")


def test_the_python_client_for_a_named_profile(target: Target, named_profile: str) -> None:
    with client_for(target, profile=named_profile) as client:
        assert client.get_token(min_ttl=30).expires_in >= 30


# ------------------------------------------------------------------------------------ CLI


@dataclass
class Run:
    """The CLI started, not waited for: the suite runs its calls side by side."""

    proc: subprocess.Popen[str]
    stdin: str

    def finished(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr)."""
        stdout, stderr = self.proc.communicate(self.stdin, timeout=TOOL_TIMEOUT_S)
        return self.proc.returncode, stdout, stderr


def igni_token(
    target: Target, *args: str, credentials: Credentials | None = None, stdin: str = ""
) -> Run:
    proc = subprocess.Popen(
        [str(IGNI_TOKEN), *args, "--endpoint", target.base_url, "--region", target.region],
        env=target.shell_env(credentials),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Run(proc, stdin)


@pytest.fixture(scope="module")
def cli() -> Path:
    if not IGNI_TOKEN.exists():
        pytest.skip(f"no {IGNI_TOKEN}: make venv installs the client package and its CLI")
    return IGNI_TOKEN


@pytest.mark.usefixtures("cli")
def test_the_cli_prints_tokens_and_exits_with_each_errors_code(target: Target) -> None:
    # When the CLI asks for a token as JSON, reports a stale token read from stdin (kept out of
    # the process list), asks for an unknown profile, an impossible min_ttl, and signs with a
    # wrong secret
    runs = {
        "get": igni_token(target, "get", "--json", "--min-ttl", "60"),
        "refresh": igni_token(target, "refresh", "--rejected", "-", "--header", stdin=NOT_CURRENT),
        "unknown": igni_token(target, "get", "--profile", UNKNOWN_PROFILE),
        "too_long": igni_token(target, "get", "--min-ttl", "999999999"),
        "forbidden": igni_token(target, "get", credentials=wrong_secret(target)),
    }
    done = {name: run.finished() for name, run in runs.items()}

    # Then it prints the token, as JSON or as a header line
    code, stdout, stderr = done["get"]
    assert code == 0, stderr
    answer = json.loads(stdout)
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] >= 60
    code, stdout, stderr = done["refresh"]
    assert code == 0, stderr
    assert re.fullmatch(r"Authorization: Bearer \S+\n", stdout)
    # and each error has its documented exit code, and its code in the message
    for name, (exit_code, error) in {
        "unknown": (14, "unknown_profile"),
        "too_long": (10, "invalid_request"),
        "forbidden": (12, "gateway_forbidden"),
    }.items():
        code, _, stderr = done[name]
        assert code == exit_code, (name, stderr)
        assert error in stderr, (name, stderr)


# ----------------------------------------------------------------------------------- curl


def curl(
    target: Target,
    path: str,
    *args: str,
    credentials: Credentials | None = None,
    sign: bool = True,
) -> tuple[int, dict[str, str], str]:
    """(status, headers lower-cased, body) of one curl call."""
    creds = credentials or target.credentials
    command = ["curl", "--silent", "--show-error", "--include", "--max-time", "35"]
    if sign:
        command += [
            "--aws-sigv4",
            f"aws:amz:{target.region}:execute-api",
            "--user",
            f"{creds.access_key}:{creds.secret_key}",
        ]
        if creds.token:
            command += ["--header", f"x-amz-security-token: {creds.token}"]
    done = subprocess.run(
        [*command, *args, target.url(path)],
        env=target.shell_env(creds),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def curl_sigv4() -> None:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("no curl on PATH")
    first = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    version = tuple(int(part) for part in first[1].split(".")[:2])
    if version < CURL_SIGV4_SINCE:
        pytest.skip(f"curl {first[1]} cannot sign (--aws-sigv4 needs 7.75 or later)")


@pytest.mark.usefixtures("curl_sigv4")
def test_curl_signs_its_own_requests(target: Target) -> None:
    # When curl asks for a token, reports a stale one, sends a bad body, and asks unsigned
    status, headers, body = curl(target, "/token?min_ttl=60")
    refresh = curl(
        target,
        "/token/refresh",
        "--header",
        "Content-Type: application/json",
        "--data",
        json.dumps({"rejected_token": NOT_CURRENT}),
    )
    bad = curl(
        target, "/token/refresh", "--header", "Content-Type: application/json", "--data", "{}"
    )
    unsigned = curl(target, "/token", sign=False)

    # Then the token comes with the contract's headers, and the errors are the API's
    assert status == 200, body
    assert json.loads(body)["expires_in"] >= 60
    assert headers["cache-control"] == "no-store"
    assert headers["pragma"] == "no-cache"
    assert headers["content-type"].startswith("application/json")
    assert headers["x-token-cache"] in {"memory", "dynamodb", "upstream"}
    assert headers["x-amzn-requestid"]
    # (a token this service never vended: a refresh is not a read)
    assert refresh[0] == 409, refresh
    assert json.loads(refresh[2])["error"] == "unknown_token"
    assert (bad[0], json.loads(bad[2])["error"]) == (400, "invalid_request")
    assert (unsigned[0], json.loads(unsigned[2])) == (
        403,
        {"message": "Missing Authentication Token"},
    )
