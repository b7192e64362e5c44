"""SigV4 checks as API Gateway's AWS_IAM makes them: botocore's own signer on the request as
received (its ``X-Amz-Date``, exactly its ``SignedHeaders``), compared in constant time; a
refusal is API Gateway's 403 JSON, word for word where its wording is fixed."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

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

# A mapping, an HTTPMessage (anything with items()), or ordered (name, value) pairs.
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class LocalCredential:
    """A credential the local endpoint accepts, and who API Gateway would say signed with it.

    ``user_id`` (``AIDA…``, ``AROA…:session``) is derived from the key when not given. A
    ``session_token`` must be presented when set, and must not be when unset."""

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
        cognito = ("cognitoIdentityPoolId", "cognitoIdentityId", "cognitoAuthenticationType")
        unset = (*cognito, "cognitoAuthenticationProvider", "principalOrgId", "apiKey", "apiKeyId")
        return {
            **dict.fromkeys((*unset, "clientCert")),
            "accountId": self.account_id,
            "caller": self.caller,
            "sourceIp": self.source_ip,
            "accessKey": self.access_key,
            "userArn": self.user_arn,
            "userAgent": self.user_agent,
            "user": self.user,
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
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "x-amzn-ErrorType": self.error_type}


_incomplete = functools.partial(AuthError, error_type="IncompleteSignatureException")
_invalid = functools.partial(AuthError, error_type="InvalidSignatureException")


class _ReplaySigV4(SigV4Auth):
    """botocore's signer on the request's headers, exactly the caller's ``SignedHeaders`` (its own
    choice drops some and adds ``host``); the canonical request, key derivation, HMAC are its."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return request.headers


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
    """Check a request's SigV4 signature as API Gateway's AWS_IAM authorization does: on
    ``url_path`` and ``query_string`` as on the wire (percent-encoded, stage included), what the
    caller signed. ``now`` (datetime or epoch seconds) is the verifier's clock, for tests."""
    raw_pairs = headers.items() if hasattr(headers, "items") else headers
    pairs = [(str(name).lower(), str(value)) for name, value in raw_pairs]
    header = dict(reversed(pairs))  # name -> its first value
    authorization = header.get("authorization")
    if authorization is None or not authorization.strip():
        return AuthError(MISSING_TOKEN, "MissingAuthenticationTokenException")
    parsed = _parse_authorization(authorization, header)
    if isinstance(parsed, AuthError):
        return parsed
    (access_key, scope_date, scope_region, scope_service, end), signed, signature, stamp = parsed
    if scope_date != stamp[:8]:
        return _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{stamp[:8]}', from '{stamp}'."
        )
    if scope_service != service:
        return _invalid(f"Credential should be scoped to correct service: '{service}'. ")
    if scope_region != region:
        return _invalid("Credential should be scoped to a valid region. ")
    if end != "aws4_request":
        return _invalid(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{end}'. "
        )
    if (skew_error := _check_skew(stamp, now, max_skew)) is not None:
        return skew_error

    found = credentials.get(access_key)
    credential = LocalCredential(found) if isinstance(found, str) else found
    presented = header.get("x-amz-security-token")
    expected = None if credential is None else credential.session_token
    if (
        credential is None
        or (presented is None) != (expected is None)  # a token exactly when the key has one
        or not hmac.compare_digest((presented or "").encode(), (expected or "").encode())
    ):
        return AuthError(INVALID_TOKEN, "UnrecognizedClientException")
    if "host" not in signed:
        return _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    body = body or b""
    declared_hash = header.get("x-amz-content-sha256")
    if declared_hash is not None and not hmac.compare_digest(
        declared_hash.encode(), hashlib.sha256(body).hexdigest().encode()
    ):
        # botocore would trust a declared payload hash; API Gateway hashes the body it got.
        return _invalid(SIGNATURE_MISMATCH)

    # The netloc is a placeholder (the signed Host header is what counts); a plain http URL
    # makes botocore hash the payload, which it may skip for https.
    path = url_path if url_path.startswith("/") else f"/{url_path}"
    url = f"http://sigv4-verifier.invalid{path}" + (f"?{query_string}" if query_string else "")
    request = AWSRequest(method=method.upper(), url=url, data=body)
    for name, value in pairs:
        if name in signed:
            request.headers[name] = value  # HTTPHeaders appends: repeats stay repeated
    request.context["timestamp"] = stamp
    keys = ReadOnlyCredentials(access_key, credential.secret_key, credential.session_token)
    signer = _ReplaySigV4(keys, service, region)
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    expected_signature = signer.signature(string_to_sign, request)
    if not hmac.compare_digest(expected_signature.encode(), signature.encode()):
        return _invalid(
            f"{SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
        )

    arn = credential.user_arn
    arn_parts = arn.split(":", 5)
    account_id = arn_parts[4] if len(arn_parts) == 6 and arn_parts[4] else LOCAL_ACCOUNT_ID
    # A stable stand-in for IAM's unique id: AIDA… for a user, AROA…:session for a role.
    digest = base64.b32encode(hashlib.sha256(f"{access_key}|{arn}".encode()).digest()).decode()
    derived = f"AIDA{digest[:17]}"
    if arn_parts[-1].startswith("assumed-role/"):
        derived = f"AROA{digest[:17]}:{arn.rsplit('/', 1)[-1]}"
    user_id = credential.user_id or derived
    seen = (account_id, access_key, source_ip, header.get("user-agent"))
    return CallerIdentity(user_id, user_id, arn, *seen)


_Parsed = tuple[list[str], frozenset[str], str, str]


def _parse_authorization(authorization: str, header: dict[str, str]) -> _Parsed | AuthError:
    """(credential scope, signed header names, signature, timestamp) or API Gateway's refusal."""
    algorithm, _, rest = authorization.strip().partition(" ")
    params: dict[str, str] = {}
    for raw in filter(None, re.split(r"[,\s]+", rest.strip())):
        key, eq, value = raw.partition("=")
        if not eq:
            # API Gateway does not echo the offending pair: it may be a bearer token.
            digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode()
            return _incomplete(
                "Invalid key=value pair (missing equal-sign) in Authorization header "
                f"(hashed with SHA-256 and encoded with Base64): '{digest}'."
            )
        params[key] = value

    date_value = header.get("x-amz-date") or header.get("date")
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
    timestamp = _timestamp(header, date_value or "")
    if timestamp is None:
        return _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{date_value}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
    return parts, frozenset(params["SignedHeaders"].split(";")), params["Signature"], timestamp


def _timestamp(header: dict[str, str], date_value: str) -> str | None:
    """The request time in SigV4's basic ISO 8601 form, from X-Amz-Date or else Date."""
    try:
        if header.get("x-amz-date") is not None:
            datetime.strptime(date_value, SIGV4_TIMESTAMP)
            return date_value if _TIME_RE.match(date_value) else None
        parsed = parsedate_to_datetime(date_value)
    except (TypeError, ValueError):
        return None
    parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(SIGV4_TIMESTAMP)


def _check_skew(timestamp: str, now: datetime | float | None, max_skew: int) -> AuthError | None:
    clock = now if isinstance(now, datetime) else datetime.fromtimestamp(now or time.time(), UTC)
    clock = clock if clock.tzinfo else clock.replace(tzinfo=UTC)
    signed_at = datetime.strptime(timestamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    skew = timedelta(seconds=max_skew)
    span = f"{max_skew // 60} min." if max_skew % 60 == 0 else f"{max_skew} sec."
    if signed_at < clock - skew:
        return _invalid(
            f"Signature expired: {timestamp} is now earlier than {clock - skew:{SIGV4_TIMESTAMP}} "
            f"({clock:{SIGV4_TIMESTAMP}} - {span})"
        )
    if signed_at > clock + skew:
        return _invalid(
            f"Signature not yet current: {timestamp} is still later than "
            f"{clock + skew:{SIGV4_TIMESTAMP}} ({clock:{SIGV4_TIMESTAMP}} + {span})"
        )
    return None
