"""Signature Version 4 checks as API Gateway's AWS_IAM authorization makes them.

Nothing here computes SigV4 by hand: the signature is recomputed with botocore's own signer on
a request rebuilt from the incoming one (same ``X-Amz-Date``, exactly the caller's
``SignedHeaders``) and compared with :func:`hmac.compare_digest`. A refusal is API Gateway's 403
JSON, word for word where its wording is fixed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import ReadOnlyCredentials

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 300  # API Gateway refuses a signature dated more than 5 minutes away.
LOCAL_ACCOUNT_ID = "123456789012"
DEFAULT_LOCAL_USER_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:user/local-caller"

# The documented test credentials `make local` accepts when its environment has none; the client
# falls back to the same values for a loopback endpoint (tests/unit/test_sigv4.py checks that
# the two copies agree). Not an AWS secret.
LOCAL_TEST_ACCESS_KEY_ID = "AKIAIGNILOCALTESTKEY"
LOCAL_TEST_SECRET_ACCESS_KEY = "IgniLocalTestSecretKeyNotAnAwsSecret0000"  # nosec B105

MISSING_TOKEN = "Missing Authentication Token"  # nosec B105 - a message
INVALID_TOKEN = "The security token included in the request is invalid."  # nosec B105
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
"""A mapping, an ``HTTPMessage`` (anything with ``items()``), or ordered (name, value) pairs."""


@dataclass(frozen=True)
class LocalCredential:
    """A credential the local endpoint accepts, and who API Gateway would say signed with it.

    ``user_id`` (``caller``/``user``: ``AIDA…``, or ``AROA…:session`` for a role session) is
    derived from the key when not given. With ``session_token`` set a request must present it in
    ``X-Amz-Security-Token``; without, a request presenting one is refused.
    """

    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    user_arn: str = DEFAULT_LOCAL_USER_ARN
    user_id: str | None = None


@dataclass(frozen=True)
class CallerIdentity:
    """Who signed a request: what API Gateway puts in ``requestContext.identity``."""

    caller: str
    user: str
    user_arn: str
    account_id: str
    access_key: str
    source_ip: str
    user_agent: str | None

    def as_request_context_identity(self) -> dict[str, str | None]:
        """``requestContext.identity`` as API Gateway sends it to a REST proxy integration."""
        return {
            "cognitoIdentityPoolId": None,
            "accountId": self.account_id,
            "cognitoIdentityId": None,
            "caller": self.caller,
            "sourceIp": self.source_ip,
            "principalOrgId": None,
            "accessKey": self.access_key,
            "cognitoAuthenticationType": None,
            "cognitoAuthenticationProvider": None,
            "userArn": self.user_arn,
            "userAgent": self.user_agent,
            "user": self.user,
            "apiKey": None,
            "apiKeyId": None,
            "clientCert": None,
        }


@dataclass(frozen=True)
class AuthError:
    """API Gateway's refusal: 403 and ``{"message": ...}`` (an IAM denial says ``"Message"``)."""

    message: str
    error_type: str  # sent as x-amzn-ErrorType
    status: int = 403
    message_key: str = "message"

    @property
    def body(self) -> dict[str, str]:
        return {self.message_key: self.message}

    @property
    def body_json(self) -> str:
        return json.dumps(self.body)

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "x-amzn-ErrorType": self.error_type}


def _incomplete(message: str) -> AuthError:
    return AuthError(message, "IncompleteSignatureException")


def _invalid(message: str) -> AuthError:
    return AuthError(message, "InvalidSignatureException")


def verify_request(  # noqa: PLR0917 - the positional signature is the documented interface
    method: str,
    url_path: str,
    query_string: str,
    headers: Headers,
    body: bytes | None,
    credentials: Mapping[str, str | LocalCredential],
    region: str,
    service: str = "execute-api",
    now: datetime | float | None = None,
    max_skew: int = MAX_SKEW_SECONDS,
    *,
    source_ip: str = "127.0.0.1",
) -> CallerIdentity | AuthError:
    """Check a request's SigV4 signature as API Gateway's AWS_IAM authorization does.

    ``url_path`` and ``query_string`` are as they arrived on the wire (percent-encoded, the stage
    included, no ``?``): what the caller signed. ``credentials`` maps an access key id to its
    secret key or a :class:`LocalCredential`. ``now`` (datetime or epoch seconds) is for tests.
    """
    pairs = _header_pairs(headers)
    authorization = _first(pairs, "authorization")
    if authorization is None or not authorization.strip():
        return AuthError(MISSING_TOKEN, "MissingAuthenticationTokenException")
    parsed = _parse_authorization(authorization, pairs)
    if isinstance(parsed, AuthError):
        return parsed
    credential_scope, signed_headers, signature, timestamp = parsed
    access_key, scope_date, scope_region, scope_service, terminator = credential_scope
    error = _check_scope(
        scope_date, scope_region, scope_service, terminator, timestamp, region, service
    ) or _check_skew(timestamp, _as_datetime(now), max_skew)
    if error is not None:
        return error

    credential = _lookup(credentials, access_key)
    presented_token = _first(pairs, "x-amz-security-token")
    if credential is None or not _session_token_ok(credential.session_token, presented_token):
        return AuthError(INVALID_TOKEN, "UnrecognizedClientException")
    if "host" not in signed_headers:
        return _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    body_bytes = body or b""
    declared_hash = _first(pairs, "x-amz-content-sha256")
    if declared_hash is not None and not hmac.compare_digest(
        declared_hash.encode(), hashlib.sha256(body_bytes).hexdigest().encode()
    ):
        # botocore would trust a declared payload hash; API Gateway hashes the body it got.
        return _invalid(SIGNATURE_MISMATCH)

    canonical, string_to_sign, expected = _recompute(
        method,
        url_path,
        query_string,
        [(n, v) for n, v in pairs if n in signed_headers],
        body_bytes,
        timestamp,
        ReadOnlyCredentials(access_key, credential.secret_key, credential.session_token),
        region,
        service,
    )
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return _invalid(
            f"{SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
        )
    return _identity(access_key, credential, source_ip, _first(pairs, "user-agent"))


_Parsed = tuple[tuple[str, str, str, str, str], frozenset[str], str, str]


def _parse_authorization(authorization: str, pairs: list[tuple[str, str]]) -> _Parsed | AuthError:
    """(credential scope, signed header names, signature, timestamp) or API Gateway's refusal."""
    algorithm, _, rest = authorization.strip().partition(" ")
    params: dict[str, str] = {}
    for raw in re.split(r"[,\s]+", rest.strip()):
        if not raw:
            continue
        key, eq, value = raw.partition("=")
        if not eq:
            # API Gateway does not echo the offending pair: it may be a bearer token.
            digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode()
            return _incomplete(
                "Invalid key=value pair (missing equal-sign) in Authorization header "
                f"(hashed with SHA-256 and encoded with Base64): '{digest}'."
            )
        params[key] = value

    date_value = _first(pairs, "x-amz-date") or _first(pairs, "date")
    missing = [
        f"Authorization header requires '{name}' parameter. "
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if date_value is None:
        missing.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        )
    if missing:
        return _incomplete("".join(missing) + f"Authorization={authorization}")
    if algorithm != ALGORITHM:
        return _incomplete(f"Unsupported Authorization Type: '{algorithm}'. Use {ALGORITHM}.")
    parts = params["Credential"].split("/")
    if len(parts) != 5:
        return _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{params['Credential']}'"
        )
    timestamp = None if date_value is None else _timestamp(pairs, date_value)
    if timestamp is None:
        return _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{date_value}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
    scope = (parts[0], parts[1], parts[2], parts[3], parts[4])
    return scope, frozenset(params["SignedHeaders"].split(";")), params["Signature"], timestamp


def _timestamp(pairs: list[tuple[str, str]], date_value: str) -> str | None:
    """The request time in SigV4's basic ISO 8601 form, from X-Amz-Date or else Date."""
    if _first(pairs, "x-amz-date") is not None:
        try:
            datetime.strptime(date_value, SIGV4_TIMESTAMP)
        except ValueError:
            return None
        return date_value if _TIME_RE.match(date_value) else None
    try:
        parsed = parsedate_to_datetime(date_value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(SIGV4_TIMESTAMP)


def _check_scope(  # noqa: PLR0917
    scope_date: str,
    scope_region: str,
    scope_service: str,
    terminator: str,
    timestamp: str,
    region: str,
    service: str,
) -> AuthError | None:
    if scope_date != timestamp[:8]:
        return _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{timestamp[:8]}', from '{timestamp}'."
        )
    if scope_service != service:
        return _invalid(f"Credential should be scoped to correct service: '{service}'. ")
    if scope_region != region:
        return _invalid("Credential should be scoped to a valid region. ")
    if terminator != "aws4_request":
        return _invalid(
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not '{terminator}'. "
        )
    return None


def _check_skew(timestamp: str, now: datetime, max_skew: int) -> AuthError | None:
    signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    skew = timedelta(seconds=max_skew)
    span = f"{max_skew // 60} min." if max_skew % 60 == 0 else f"{max_skew} sec."
    now_s = now.strftime(SIGV4_TIMESTAMP)
    if signed_at < now - skew:
        earliest = (now - skew).strftime(SIGV4_TIMESTAMP)
        return _invalid(
            f"Signature expired: {timestamp} is now earlier than {earliest} ({now_s} - {span})"
        )
    if signed_at > now + skew:
        latest = (now + skew).strftime(SIGV4_TIMESTAMP)
        return _invalid(
            f"Signature not yet current: {timestamp} is still later than {latest} "
            f"({now_s} + {span})"
        )
    return None


class _ReplaySigV4(SigV4Auth):
    """botocore's signer, told to sign exactly the headers the caller signed.

    ``SigV4Auth.headers_to_sign`` drops some hop-by-hop headers and adds ``host``; a verifier must
    take the caller's ``SignedHeaders`` as given. Everything else (canonical request, string to
    sign, key derivation, HMAC) is botocore's.
    """

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        header_map = HTTPHeaders()
        for name, value in request.headers.items():
            header_map[name.lower()] = value
        return header_map


def _recompute(  # noqa: PLR0917
    method: str,
    url_path: str,
    query_string: str,
    signed_pairs: list[tuple[str, str]],
    body: bytes,
    timestamp: str,
    credentials: ReadOnlyCredentials,
    region: str,
    service: str,
) -> tuple[str, str, str]:
    """(canonical request, string to sign, signature) as botocore computes them."""
    path = url_path if url_path.startswith("/") else f"/{url_path}"
    # The netloc is a placeholder (the signed Host header is what counts); a plain http URL
    # makes botocore hash the payload, which it may skip for https.
    url = f"http://sigv4-verifier.invalid{path}" + (f"?{query_string}" if query_string else "")
    request = AWSRequest(method=method.upper(), url=url, data=body)
    for name, value in signed_pairs:
        request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    request.context["timestamp"] = timestamp
    signer = _ReplaySigV4(credentials, service, region)
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    return canonical, string_to_sign, signer.signature(string_to_sign, request)


def _session_token_ok(expected: str | None, presented: str | None) -> bool:
    if expected is None or presented is None:
        return expected is presented
    return hmac.compare_digest(expected.encode(), presented.encode())


def _lookup(
    credentials: Mapping[str, str | LocalCredential], access_key: str
) -> LocalCredential | None:
    found = credentials.get(access_key)
    return LocalCredential(secret_key=found) if isinstance(found, str) else found


def _identity(
    access_key: str, credential: LocalCredential, source_ip: str, user_agent: str | None
) -> CallerIdentity:
    arn = credential.user_arn
    arn_parts = arn.split(":", 5)
    account_id = arn_parts[4] if len(arn_parts) == 6 and arn_parts[4] else LOCAL_ACCOUNT_ID
    user_id = credential.user_id or _derived_user_id(access_key, arn)
    return CallerIdentity(user_id, user_id, arn, account_id, access_key, source_ip, user_agent)


def _derived_user_id(access_key: str, arn: str) -> str:
    """A stable stand-in for IAM's unique id: ``AIDA…`` for a user, ``AROA…:session`` for a role."""
    digest = base64.b32encode(hashlib.sha256(f"{access_key}|{arn}".encode()).digest()).decode()
    resource = arn.split(":", 5)[-1]
    if resource.startswith("assumed-role/"):
        return f"AROA{digest[:17]}:{resource.rsplit('/', 1)[-1]}"
    return f"AIDA{digest[:17]}"


def _header_pairs(headers: Headers) -> list[tuple[str, str]]:
    items: Any = getattr(headers, "items", None)
    pairs = cast(Iterable[tuple[str, str]], items() if callable(items) else headers)
    return [(str(name).lower(), str(value)) for name, value in pairs]


def _first(pairs: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in pairs if key == name), None)


def _as_datetime(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)
