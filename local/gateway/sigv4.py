"""Signature Version 4 checks for the local endpoint, the way API Gateway's AWS_IAM auth does them.

The local endpoint must behave like the deployed API: a request without a valid SigV4 signature
for service ``execute-api`` is answered 403 with API Gateway's JSON message and never reaches the
function; a valid one reaches it with ``requestContext.identity`` filled in.

Nothing here computes SigV4 by hand. The signature is recomputed with botocore's own signer
(:class:`botocore.auth.SigV4Auth`) on an :class:`~botocore.awsrequest.AWSRequest` rebuilt from the
incoming request, with the same ``X-Amz-Date`` and exactly the headers the caller listed in
``SignedHeaders``, and the two are compared with :func:`hmac.compare_digest`.

Entry points:

* :func:`verify_request` answers a :class:`CallerIdentity` or an :class:`AuthError`.
* :func:`authorize` imitates IAM's ``execute-api:Invoke`` on method ARNs (``GET/token/analytics``,
  ``*`` wildcards); :func:`not_authorized_error` is API Gateway's answer when it says no.
* :class:`LocalSigV4Verifier` ties both together for the local HTTP server: one call per request.
* :func:`local_credentials` decides which credentials ``make local`` accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import ReadOnlyCredentials

__all__ = [
    "DEFAULT_LOCAL_USER_ARN",
    "LOCAL_ACCOUNT_ID",
    "LOCAL_TEST_ACCESS_KEY_ID",
    "LOCAL_TEST_SECRET_ACCESS_KEY",
    "MAX_SKEW_SECONDS",
    "AuthError",
    "CallerIdentity",
    "LocalCredential",
    "LocalSigV4Verifier",
    "RawRequest",
    "authorize",
    "local_credentials",
    "method_arn",
    "not_authorized_error",
    "verify_request",
]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 300
"""API Gateway refuses a signature dated more than 5 minutes away from its clock."""

LOCAL_ACCOUNT_ID = "123456789012"
DEFAULT_LOCAL_USER_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:user/local-caller"

# The documented test credentials `make local` accepts when its environment has no AWS
# credentials. The client (igni_token_client.client) falls back to the same values for a loopback
# endpoint; tests/unit/test_sigv4.py checks that the two copies agree. Not an AWS secret.
LOCAL_TEST_ACCESS_KEY_ID = "AKIAIGNILOCALTESTKEY"
LOCAL_TEST_SECRET_ACCESS_KEY = "IgniLocalTestSecretKeyNotAnAwsSecret0000"  # nosec B105

# API Gateway's messages, word for word where they are fixed.
MISSING_TOKEN = "Missing Authentication Token"  # nosec B105 - a message
INVALID_TOKEN = "The security token included in the request is invalid."  # nosec B105
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)

_SIGV4_TIME_FORMAT = SIGV4_TIMESTAMP  # "%Y%m%dT%H%M%SZ"
_SIGV4_TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")


class _HeaderSource(Protocol):
    """A mapping of headers, or anything whose ``items()`` yields every (name, value) pair.

    ``http.server``'s ``self.headers`` (an ``HTTPMessage``) qualifies and keeps repeated headers.
    """

    def items(self) -> Iterable[tuple[str, str]]: ...


Headers = Mapping[str, str] | _HeaderSource | Iterable[tuple[str, str]]
"""A mapping, an ``HTTPMessage``, or (name, value) pairs in order with repeats kept."""


class RawRequest(Protocol):
    """A request as received (``local.api_server.HttpRequest`` fits): raw path and query."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def query(self) -> str: ...

    @property
    def headers(self) -> Headers: ...

    @property
    def body(self) -> bytes: ...

    @property
    def client_ip(self) -> str: ...


@dataclass(frozen=True)
class LocalCredential:
    """A credential the local endpoint accepts, with the identity API Gateway would report for it.

    ``user_arn`` decides ``userArn`` and ``accountId``; ``user_id`` is the unique id that API
    Gateway puts in ``caller`` and ``user`` (``AIDA…`` for a user, ``AROA…:session`` for a role
    session) and is derived from the access key when not given. ``session_token``, when set, must be
    presented in ``X-Amz-Security-Token``; when unset, a request carrying one is refused.
    """

    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    user_arn: str = DEFAULT_LOCAL_USER_ARN
    user_id: str | None = None


@dataclass(frozen=True)
class CallerIdentity:
    """Who signed a request: the fields API Gateway fills in ``requestContext.identity``."""

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
    """API Gateway's refusal: status 403 and a JSON body ``{"message": ...}``.

    An IAM denial is the one answer API Gateway spells ``{"Message": ...}``; ``message_key`` keeps
    that difference. ``error_type`` goes in the ``x-amzn-ErrorType`` header as API Gateway does.
    """

    message: str
    error_type: str
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

    @property
    def header_pairs(self) -> list[tuple[str, str]]:
        return list(self.headers.items())

    def as_proxy_response(self) -> dict[str, Any]:
        """The refusal in the shape of a REST proxy integration response."""
        return {
            "statusCode": self.status,
            "headers": self.headers,
            "body": self.body_json,
            "isBase64Encoded": False,
        }


# --------------------------------------------------------------------------------------------
# Verification


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

    ``url_path`` and ``query_string`` are exactly as they arrived on the wire (still
    percent-encoded, the stage prefix such as ``/v1`` included, the query without its ``?``): they
    are what the caller signed. ``credentials`` maps an access key id to its secret key, or to a
    :class:`LocalCredential` for a session token or a configured identity. ``now`` (a datetime or
    epoch seconds) is the verifier's clock, for tests.
    """
    pairs = _header_pairs(headers)
    authorization = _first(pairs, "authorization")
    if authorization is None or not authorization.strip():
        return AuthError(MISSING_TOKEN, "MissingAuthenticationTokenException")

    parsed = _parse_authorization(authorization, pairs)
    if isinstance(parsed, AuthError):
        return parsed
    access_key, scope_date, scope_region, scope_service, terminator = parsed.credential
    timestamp = parsed.timestamp

    scope_error = _check_scope(
        scope_date=scope_date,
        scope_region=scope_region,
        scope_service=scope_service,
        terminator=terminator,
        timestamp=timestamp,
        region=region,
        service=service,
    )
    if scope_error is not None:
        return scope_error

    skew_error = _check_skew(timestamp, _as_datetime(now), max_skew)
    if skew_error is not None:
        return skew_error

    credential = _lookup(credentials, access_key)
    presented_token = _first(pairs, "x-amz-security-token")
    if credential is None or not _session_token_ok(credential.session_token, presented_token):
        return AuthError(INVALID_TOKEN, "UnrecognizedClientException")

    if "host" not in parsed.signed_headers:
        return AuthError(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            "IncompleteSignatureException",
        )

    body_bytes = body or b""
    declared_hash = _first(pairs, "x-amz-content-sha256")
    if declared_hash is not None and not hmac.compare_digest(
        declared_hash.encode(), hashlib.sha256(body_bytes).hexdigest().encode()
    ):
        # botocore would trust a declared payload hash; API Gateway hashes the body it got.
        return AuthError(SIGNATURE_MISMATCH, "InvalidSignatureException")

    canonical, string_to_sign, expected = _recompute(
        method=method,
        url_path=url_path,
        query_string=query_string,
        signed_pairs=[(n, v) for n, v in pairs if n in parsed.signed_headers],
        body=body_bytes,
        timestamp=timestamp,
        access_key=access_key,
        credential=credential,
        region=region,
        service=service,
    )
    if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
        return AuthError(
            f"{SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
            "InvalidSignatureException",
        )

    return _identity(access_key, credential, source_ip, _first(pairs, "user-agent"))


@dataclass(frozen=True)
class _ParsedAuthorization:
    credential: tuple[str, str, str, str, str]
    signed_headers: frozenset[str]
    signed_header_list: str
    signature: str
    timestamp: str


def _parse_authorization(
    authorization: str, pairs: list[tuple[str, str]]
) -> _ParsedAuthorization | AuthError:
    algorithm, _, rest = authorization.strip().partition(" ")
    params: dict[str, str] = {}
    for raw in re.split(r"[,\s]+", rest.strip()):
        if not raw:
            continue
        key, eq, value = raw.partition("=")
        if not eq:
            # API Gateway does not echo the offending pair: it may be a bearer token.
            digest = base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode()
            return AuthError(
                "Invalid key=value pair (missing equal-sign) in Authorization header "
                f"(hashed with SHA-256 and encoded with Base64): '{digest}'.",
                "IncompleteSignatureException",
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
        return AuthError(
            "".join(missing) + f"Authorization={authorization}", "IncompleteSignatureException"
        )
    if algorithm != ALGORITHM:
        return AuthError(
            f"Unsupported Authorization Type: '{algorithm}'. Use {ALGORITHM}.",
            "IncompleteSignatureException",
        )

    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5:
        return AuthError(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'",
            "IncompleteSignatureException",
        )

    timestamp = None if date_value is None else _timestamp(pairs, date_value)
    if timestamp is None:
        return AuthError(
            f"Date must be in ISO-8601 'basic format'. Got '{date_value}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601",
            "IncompleteSignatureException",
        )

    signed_list = params["SignedHeaders"]
    return _ParsedAuthorization(
        credential=(parts[0], parts[1], parts[2], parts[3], parts[4]),
        signed_headers=frozenset(signed_list.split(";")),
        signed_header_list=signed_list,
        signature=params["Signature"],
        timestamp=timestamp,
    )


def _timestamp(pairs: list[tuple[str, str]], date_value: str) -> str | None:
    """The request time in SigV4's basic ISO 8601 form, from X-Amz-Date or else Date."""
    if _first(pairs, "x-amz-date") is not None:
        if not _SIGV4_TIME_RE.match(date_value):
            return None
        try:
            datetime.strptime(date_value, _SIGV4_TIME_FORMAT)
        except ValueError:
            return None
        return date_value
    try:
        parsed = parsedate_to_datetime(date_value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(_SIGV4_TIME_FORMAT)


def _check_scope(
    *,
    scope_date: str,
    scope_region: str,
    scope_service: str,
    terminator: str,
    timestamp: str,
    region: str,
    service: str,
) -> AuthError | None:
    if scope_date != timestamp[:8]:
        return AuthError(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{timestamp[:8]}', from '{timestamp}'.",
            "InvalidSignatureException",
        )
    if scope_service != service:
        return AuthError(
            f"Credential should be scoped to correct service: '{service}'. ",
            "InvalidSignatureException",
        )
    if scope_region != region:
        return AuthError(
            "Credential should be scoped to a valid region. ", "InvalidSignatureException"
        )
    if terminator != "aws4_request":
        return AuthError(
            "Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not '{terminator}'. ",
            "InvalidSignatureException",
        )
    return None


def _check_skew(timestamp: str, now: datetime, max_skew: int) -> AuthError | None:
    signed_at = datetime.strptime(timestamp, _SIGV4_TIME_FORMAT).replace(tzinfo=UTC)
    skew = timedelta(seconds=max_skew)
    span = f"{max_skew // 60} min." if max_skew % 60 == 0 else f"{max_skew} sec."
    now_s = now.strftime(_SIGV4_TIME_FORMAT)
    if signed_at < now - skew:
        earliest = (now - skew).strftime(_SIGV4_TIME_FORMAT)
        return AuthError(
            f"Signature expired: {timestamp} is now earlier than {earliest} ({now_s} - {span})",
            "InvalidSignatureException",
        )
    if signed_at > now + skew:
        latest = (now + skew).strftime(_SIGV4_TIME_FORMAT)
        return AuthError(
            f"Signature not yet current: {timestamp} is still later than {latest} "
            f"({now_s} + {span})",
            "InvalidSignatureException",
        )
    return None


class _ReplaySigV4(SigV4Auth):
    """botocore's signer, told to sign exactly the headers the caller signed.

    ``SigV4Auth.headers_to_sign`` drops a few hop-by-hop headers and adds ``host`` when absent;
    a verifier must instead take the caller's ``SignedHeaders`` list as given, so this override
    returns the rebuilt request's headers unchanged. Everything else (canonical request, string to
    sign, key derivation, HMAC) is botocore's.
    """

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        header_map = HTTPHeaders()
        for name, value in request.headers.items():
            header_map[name.lower()] = value
        return header_map


def _recompute(
    *,
    method: str,
    url_path: str,
    query_string: str,
    signed_pairs: list[tuple[str, str]],
    body: bytes,
    timestamp: str,
    access_key: str,
    credential: LocalCredential,
    region: str,
    service: str,
) -> tuple[str, str, str]:
    """(canonical request, string to sign, signature) as botocore computes them."""
    path = url_path if url_path.startswith("/") else f"/{url_path}"
    # The netloc is a placeholder: the signed Host header is what counts, and a fixed http URL
    # makes botocore hash the payload (it may skip that for https).
    url = f"http://sigv4-verifier.invalid{path}" + (f"?{query_string}" if query_string else "")
    request = AWSRequest(method=method.upper(), url=url, data=body)
    for name, value in signed_pairs:
        request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    request.context["timestamp"] = timestamp
    signer = _ReplaySigV4(
        ReadOnlyCredentials(access_key, credential.secret_key, credential.session_token),
        service,
        region,
    )
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    return canonical, string_to_sign, signer.signature(string_to_sign, request)


def _session_token_ok(expected: str | None, presented: str | None) -> bool:
    if expected is None:
        return presented is None
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def _lookup(
    credentials: Mapping[str, str | LocalCredential], access_key: str
) -> LocalCredential | None:
    found = credentials.get(access_key)
    if found is None:
        return None
    return LocalCredential(secret_key=found) if isinstance(found, str) else found


def _identity(
    access_key: str, credential: LocalCredential, source_ip: str, user_agent: str | None
) -> CallerIdentity:
    arn = credential.user_arn
    arn_parts = arn.split(":", 5)
    account_id = arn_parts[4] if len(arn_parts) == 6 and arn_parts[4] else LOCAL_ACCOUNT_ID
    user_id = credential.user_id or _derived_user_id(access_key, arn)
    return CallerIdentity(
        caller=user_id,
        user=user_id,
        user_arn=arn,
        account_id=account_id,
        access_key=access_key,
        source_ip=source_ip,
        user_agent=user_agent,
    )


def _derived_user_id(access_key: str, arn: str) -> str:
    """A stable stand-in for IAM's unique id: ``AIDA…`` for a user, ``AROA…:session`` for a role."""
    digest = base64.b32encode(hashlib.sha256(f"{access_key}|{arn}".encode()).digest()).decode()
    unique = digest[:17]
    resource = arn.split(":", 5)[-1]
    if resource.startswith("assumed-role/"):
        session = resource.rsplit("/", 1)[-1]
        return f"AROA{unique}:{session}"
    return f"AIDA{unique}"


def _header_pairs(headers: Headers) -> list[tuple[str, str]]:
    items = getattr(headers, "items", None)
    pairs: Iterable[tuple[str, str]] = items() if callable(items) else headers  # type: ignore[assignment]
    return [(str(name).lower(), str(value)) for name, value in pairs]


def _first(pairs: list[tuple[str, str]], name: str) -> str | None:
    for key, value in pairs:
        if key == name:
            return value
    return None


def _as_datetime(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)


# --------------------------------------------------------------------------------------------
# Authorization (IAM execute-api:Invoke)


def method_arn(
    method: str,
    resource_path: str,
    *,
    region: str = "us-east-1",
    account_id: str = LOCAL_ACCOUNT_ID,
    api_id: str = "local",
    stage: str = "v1",
) -> str:
    """``arn:aws:execute-api:REGION:ACCOUNT:API_ID/STAGE/METHOD/resource/path``."""
    return (
        f"arn:aws:execute-api:{region}:{account_id}:{api_id}/{stage}/"
        f"{method.upper()}/{resource_path.lstrip('/')}"
    )


def authorize(
    identity: CallerIdentity,
    method: str,
    resource_path: str,
    allowed: Mapping[str, Iterable[str]] | None,
    *,
    region: str = "us-east-1",
    api_id: str = "local",
    stage: str = "v1",
) -> bool:
    """Would IAM allow ``execute-api:Invoke`` on this method? An imitation for the local endpoint.

    ``allowed`` maps a caller, named by access key id or by user ARN (``"*"`` for every caller not
    otherwise listed), to the resources it may invoke. A resource is either the short form of a
    method ARN, ``METHOD/resource/path`` (``GET/token``, ``GET/token/analytics``, ``POST/token/*``,
    ``*``), or a whole ARN ``arn:aws:execute-api:REGION:ACCOUNT:API_ID/STAGE/METHOD/path``. As in
    IAM, ``*`` matches any run of characters (``/`` included), ``?`` any one character, and the
    match is case-sensitive. ``allowed=None`` means no policy is configured: everything is allowed.
    A caller that the map does not name is denied, like an IAM principal without a policy.

    ``resource_path`` is the API resource path without the stage (``/token/analytics``).
    """
    if allowed is None:
        return True
    patterns = allowed.get(identity.access_key)
    if patterns is None:
        patterns = allowed.get(identity.user_arn)
    if patterns is None:
        patterns = allowed.get("*")
    if patterns is None:
        return False
    short = f"{method.upper()}/{resource_path.lstrip('/')}"
    full = method_arn(
        method,
        resource_path,
        region=region,
        account_id=identity.account_id,
        api_id=api_id,
        stage=stage,
    )
    for pattern in patterns:
        target = full if pattern.startswith("arn:") else short
        if _iam_pattern(pattern).fullmatch(target):
            return True
    return False


def _iam_pattern(pattern: str) -> re.Pattern[str]:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def not_authorized_error(
    identity: CallerIdentity,
    method: str,
    resource_path: str,
    *,
    region: str = "us-east-1",
    api_id: str = "local",
    stage: str = "v1",
) -> AuthError:
    """API Gateway's 403 when IAM denies the call (note the capital ``Message``).

    API Gateway masks all but the last four digits of the account id in the resource ARN.
    """
    masked = "********" + identity.account_id[-4:]
    resource = method_arn(
        method, resource_path, region=region, account_id=masked, api_id=api_id, stage=stage
    )
    return AuthError(
        f"User: {identity.user_arn} is not authorized to perform: execute-api:Invoke "
        f"on resource: {resource}",
        "AccessDeniedException",
        message_key="Message",
    )


# --------------------------------------------------------------------------------------------
# The local endpoint's configuration


@dataclass(frozen=True)
class LocalSigV4Verifier:
    """Everything the local HTTP server needs: one :meth:`check` per request.

    ``stage`` is the deployed stage name; a path that starts with ``/{stage}`` is verified as sent
    (the caller signed it with the stage) and authorized without it, as API Gateway does.
    """

    credentials: Mapping[str, str | LocalCredential]
    region: str = "us-east-1"
    allowed: Mapping[str, Iterable[str]] | None = None
    api_id: str = "local"
    stage: str = "v1"
    max_skew: int = MAX_SKEW_SECONDS

    def resource_path(self, raw_path: str) -> str:
        """The API resource path of a request path: ``/v1/token`` and ``/token`` give ``/token``."""
        prefix = f"/{self.stage}"
        if raw_path == prefix:
            return "/"
        if raw_path.startswith(prefix + "/"):
            return raw_path[len(prefix) :]
        return raw_path

    def check(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        headers: Headers,
        body: bytes | None,
        *,
        source_ip: str = "127.0.0.1",
        now: datetime | float | None = None,
    ) -> CallerIdentity | AuthError:
        """Verify the signature, then IAM authorization. Pass the path and query as received."""
        result = verify_request(
            method,
            raw_path,
            query_string,
            headers,
            body,
            self.credentials,
            self.region,
            now=now,
            max_skew=self.max_skew,
            source_ip=source_ip,
        )
        if isinstance(result, AuthError):
            return result
        resource = self.resource_path(raw_path)
        where = {"region": self.region, "api_id": self.api_id, "stage": self.stage}
        if not authorize(result, method, resource, self.allowed, **where):
            return not_authorized_error(result, method, resource, **where)
        return result

    def check_http(
        self, request: RawRequest, *, now: datetime | float | None = None
    ) -> CallerIdentity | AuthError:
        """:meth:`check` on a request object with the raw path, query, headers and body."""
        return self.check(
            request.method,
            request.raw_path,
            request.query,
            request.headers,
            request.body,
            source_ip=request.client_ip,
            now=now,
        )


def local_credentials(
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, LocalCredential], str]:
    """The credentials ``make local`` accepts, and a sentence saying which (for it to print).

    The AWS credentials in the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_SESSION_TOKEN``), or else the documented test credentials
    (:data:`LOCAL_TEST_ACCESS_KEY_ID` / :data:`LOCAL_TEST_SECRET_ACCESS_KEY`), which the client and
    the CLI use against a loopback endpoint when they find no credentials of their own. The
    caller's ARN is ``IGNI_LOCAL_CALLER_ARN`` or :data:`DEFAULT_LOCAL_USER_ARN`.

    Read the environment before setting moto's fake credentials in it.
    """
    env = os.environ if environ is None else environ
    arn = env.get("IGNI_LOCAL_CALLER_ARN") or DEFAULT_LOCAL_USER_ARN
    access_key = env.get("AWS_ACCESS_KEY_ID")
    secret_key = env.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        token = env.get("AWS_SESSION_TOKEN") or None
        described = (
            f"Accepting SigV4 signatures made with the AWS credentials of this environment "
            f"(AWS_ACCESS_KEY_ID {_mask(access_key)}{', with a session token' if token else ''}) "
            f"as {arn}."
        )
        return (
            {access_key: LocalCredential(secret_key, session_token=token, user_arn=arn)},
            described,
        )
    described = (
        "No AWS credentials in this environment: accepting SigV4 signatures made with the "
        f"documented local test credentials AWS_ACCESS_KEY_ID={LOCAL_TEST_ACCESS_KEY_ID} "
        f"AWS_SECRET_ACCESS_KEY={LOCAL_TEST_SECRET_ACCESS_KEY} as {arn} "
        "(igni-token uses them by itself against a loopback endpoint when it has no credentials)."
    )
    return (
        {LOCAL_TEST_ACCESS_KEY_ID: LocalCredential(LOCAL_TEST_SECRET_ACCESS_KEY, user_arn=arn)},
        described,
    )


def _mask(access_key: str) -> str:
    return f"{access_key[:4]}…{access_key[-4:]}" if len(access_key) > 8 else "****"
