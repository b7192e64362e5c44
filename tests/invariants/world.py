"""A hostile world for the vending core: an Igni that answers anything, and AWS calls that fail or
hang, all on one injected clock, and execution environments built of the real code around them.

`HostileHttp` stands where urllib3's PoolManager stands, so the real IgniClient sends to it and
parses what it answers (real `urllib3.HTTPResponse` objects built from raw bytes). The AWS
stand-ins answer as botocore clients do (the real SecretStore and TokenCipher call them), with
faults drawn by the model: an error, or a hang that costs the client's timeout.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from botocore.exceptions import ClientError, ReadTimeoutError
from hypothesis import strategies as st

from tests.fakes import Clock, FakeTable
from token_vendor.aws.secret_store import SecretStore
from token_vendor.aws.token_cipher import TokenCipher
from token_vendor.config import Config, Profile
from token_vendor.errors import StoreUnavailable
from token_vendor.igni.client import IgniClient
from token_vendor.models import cache_key
from token_vendor.observability import Telemetry
from token_vendor.vending.exchange import Exchange
from token_vendor.vending.lease import Lease
from token_vendor.vending.memory import MemoryTier
from token_vendor.vending.service import TokenService
from token_vendor.vending.versions import SecretVersions

TOKEN_URL = "https://acme.igni.co/api/v1/oauth2/token"
PROFILE = Profile(name="default", secret_id="igni/model", token_url=TOKEN_URL)
KEY = cache_key(PROFILE)
CONFIG = Config(
    profiles={"default": PROFILE},
    table_name="tokens",
    kms_key_id="model-key",
    lease_seconds=15.0,
    forced_refresh_interval_seconds=30,
    refresh_backoff_base_seconds=2.0,
    refresh_backoff_max_seconds=60.0,
    auth_failure_cache_seconds=60,
)
# What the API handler gives the service: API Gateway's 28 s budget less the answer's reserve.
BUDGET_SECONDS = 28.0 - 0.75
KMS_ENCRYPT_LIMIT = 4096
METHODS_POST_ONLY = (
    b'{"error": "invalid_client", "error_description": '
    b"\"The client cannot authenticate with methods: ['client_secret_post']\"}"
)


@dataclass(frozen=True)
class Answer:
    """One upstream reply: `kind` ok (a token), raw (these bytes), drop, or hang."""

    kind: str
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    token: str | None = None


@dataclass
class HostileHttp:
    """urllib3.PoolManager's `request`, answering from a queue (healthy tokens when empty)."""

    clock: Clock
    lifetime: int = 3600
    answers: deque[Answer] = field(default_factory=deque)
    minted: list[str] = field(default_factory=list)
    attempts: int = 0

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        self.attempts += 1
        timeout: urllib3.Timeout = kwargs["timeout"]
        read = float(timeout.read_timeout or 10.0)
        answer = self.answers.popleft() if self.answers else self._healthy()
        if answer.kind == "hang" or answer.delay > read:
            self.clock.sleep(read)
            raise urllib3.exceptions.ReadTimeoutError(None, url, "read timed out")  # type: ignore[arg-type]
        self.clock.sleep(answer.delay)
        if answer.kind == "drop":
            raise urllib3.exceptions.ProtocolError("connection dropped")
        body = answer.body
        self._note_token(body)
        if answer.kind == "ok":
            token = self._mint(answer.token)
            body = json.dumps(
                {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
            ).encode()
        return urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=dict(answer.headers),
            status=answer.status,
            preload_content=False,
            decode_content=True,
        )

    def _note_token(self, body: bytes) -> None:
        """Any string access_token upstream sent counts as minted (the vendor may vend it)."""
        try:
            data = json.loads(body)
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("access_token"), str):
            self.minted.append(data["access_token"].strip())

    def _healthy(self) -> Answer:
        return Answer("ok")

    def _mint(self, padding: str | None) -> str:
        token = f"tok-{len(self.minted) + 1}{padding or ''}"
        self.minted.append(token)
        return token


@dataclass
class Faults:
    """AWS faults for the next operations: each entry `error` or `hang` (None: healthy)."""

    clock: Clock
    hang_seconds: float
    queue: deque[str | None] = field(default_factory=deque)
    hit: bool = False

    def next(self, service: str, operation: str) -> None:
        fault = self.queue.popleft() if self.queue else None
        if fault is None:
            return
        self.hit = True
        if fault == "hang":
            self.clock.sleep(self.hang_seconds)
            raise ReadTimeoutError(endpoint_url=f"https://{service}.amazonaws.com")
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, operation
        )


class HostileSecrets:
    """Secrets Manager's get_secret_value: one version, v1, behind the drawn faults."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def get_secret_value(self, **_: Any) -> dict[str, str]:
        self._faults.next("secretsmanager", "GetSecretValue")
        value = {"client_id": "vendor", "client_secret": "s3cr3t-value", "workspace": "acme"}
        return {"SecretString": json.dumps(value), "VersionId": "v1"}


class HostileKms:
    """KMS as the cipher uses it, with Encrypt's 4,096-byte limit and context binding."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._keys: dict[bytes, tuple[bytes, dict[str, str]]] = {}

    def generate_data_key(self, **kwargs: Any) -> dict[str, bytes]:
        self._faults.next("kms", "GenerateDataKey")
        plain = os.urandom(32)
        wrapped = b"wrapped-" + os.urandom(16)
        self._keys[wrapped] = (plain, dict(kwargs["EncryptionContext"]))
        return {"Plaintext": plain, "CiphertextBlob": wrapped}

    def encrypt(self, **kwargs: Any) -> dict[str, bytes]:
        self._faults.next("kms", "Encrypt")
        if len(kwargs["Plaintext"]) > KMS_ENCRYPT_LIMIT:
            raise ClientError({"Error": {"Code": "ValidationException"}}, "Encrypt")
        wrapped = b"direct-" + os.urandom(16)
        self._keys[wrapped] = (kwargs["Plaintext"], dict(kwargs["EncryptionContext"]))
        return {"CiphertextBlob": wrapped}

    def decrypt(self, **kwargs: Any) -> dict[str, bytes]:
        self._faults.next("kms", "Decrypt")
        plain, context = self._keys.get(kwargs["CiphertextBlob"], (b"", {}))
        if not plain or context != kwargs["EncryptionContext"]:
            raise ClientError({"Error": {"Code": "InvalidCiphertextException"}}, "Decrypt")
        return {"Plaintext": plain}


def table_fault(faults: Faults) -> Any:
    """The fault hook of tests.fakes.FakeTable: a failing or hanging DynamoDB call."""

    def hook(operation: str) -> None:
        try:
            faults.next("dynamodb", operation)
        except (ClientError, ReadTimeoutError) as exc:
            raise StoreUnavailable(f"DynamoDB {operation} failed ({type(exc).__name__})") from None

    return hook


@dataclass
class Environment:
    """One execution environment: its service and the lease it holds through."""

    service: TokenService
    lease: Lease

    def vend(self, clock: Clock, min_ttl: int = 0) -> Any:
        return self.service.vend(PROFILE, deadline=clock.mono() + BUDGET_SECONDS, min_ttl=min_ttl)

    def report(self, clock: Clock, token: str) -> Any:
        return self.service.force_refresh(PROFILE, token, deadline=clock.mono() + BUDGET_SECONDS)


class World:
    """One clock, one table (sealed by the real cipher over HostileKms), a hostile Igni and
    flaky AWS, and the environments that share them."""

    def __init__(
        self,
        *,
        seed: int = 0,
        lifetime: int = 3600,
        config: Config = CONFIG,
        on_exchange: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.faults = Faults(self.clock, hang_seconds=config.aws_read_timeout)
        self.http = HostileHttp(self.clock, lifetime=lifetime)
        self.kms = HostileKms(self.faults)
        self.table = FakeTable(TokenCipher(self.kms, config.kms_key_id))  # type: ignore[arg-type]
        self.table.fault = table_fault(self.faults)
        self.on_exchange = on_exchange

    def environment(self, owner: str) -> Environment:
        clock, config = self.clock, self.config
        telemetry = Telemetry()
        secrets = SecretStore(
            HostileSecrets(self.faults),  # type: ignore[arg-type]
            cache_seconds=config.secret_cache_seconds,
            clock=clock.mono,
        )
        versions = SecretVersions(
            secrets, telemetry, pause_seconds=config.recheck_pause_seconds, monotonic=clock.mono
        )
        igni = IgniClient(
            self.http,  # type: ignore[arg-type]
            max_attempts=config.igni_max_attempts,
            retry_after_max=config.refresh_backoff_max_seconds,
            clock=clock.mono,
            wall=clock.wall,
            sleep=clock.sleep,
            jitter=self.rng.random,
        )
        exchange = Exchange(
            versions,
            _Counting(igni, self.on_exchange),  # type: ignore[arg-type]
            telemetry,
            config.freshness,
            wall=clock.wall,
            monotonic=clock.mono,
        )
        lease = Lease(
            self.table,  # type: ignore[arg-type]
            lease_seconds=config.lease_seconds,
            owner_id=owner,
            wall=clock.wall,
            monotonic=clock.mono,
            sleep=clock.sleep,
            jitter=self.rng.random,
        )
        service = TokenService(
            config,
            versions=versions,
            exchange=exchange,
            table=self.table,  # type: ignore[arg-type]
            lease=lease,
            memory=MemoryTier(clock=clock.mono),
            telemetry=telemetry,
            wall=clock.wall,
            monotonic=clock.mono,
            jitter=self.rng.random,
        )
        return Environment(service, lease)


class _Counting:
    """The real IgniClient, with each exchange (one call of the fleet, its retries included)
    announced before it starts."""

    def __init__(self, igni: IgniClient, on_exchange: Callable[[], None] | None) -> None:
        self._igni = igni
        self._on_exchange = on_exchange

    def exchange_for(self, *args: Any, **kwargs: Any) -> Any:
        if self._on_exchange is not None:
            self._on_exchange()
        return self._igni.exchange_for(*args, **kwargs)


# ------------------------------------------------------------------- what Igni may answer

STATUSES = st.one_of(
    st.sampled_from([200, 201, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504]),
    st.integers(min_value=100, max_value=599),
)
RETRY_AFTERS = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=400).map(str),
    st.sampled_from(
        [
            "²",
            "٣",
            "9" * 400,
            "315360000",
            "-5",
            " 7 ",
            "5.5",
            "soon",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Mon, 01 Jan 2027 00:00:00 GMT",
            "Sun, 06 Dec 2026 99:99:99 GMT",
            "",
        ]
    ),
    st.text(max_size=30),
)
ODD_TOKENS = st.sampled_from(
    [
        None,
        "",
        "   ",
        5,
        ["tok"],
        "abc\ud800",
        "abc\r\nSet-Cookie: x=1",
        "tok\x00",
        "t\u00e9k",
        "x" * 70_000,
    ]
)
EXPIRES = st.one_of(
    st.integers(min_value=-10, max_value=400_000),
    st.sampled_from([None, "172800", "٣٠٠", "abc", 1.5e308, float("nan"), True, 10**400, 0.5]),
)


def _json(value: object) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, OverflowError):
        return b'{"access_token": "broken'


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """Anything an upstream token endpoint, honest or not, could send back."""
    delay = draw(st.sampled_from([0.0, 0.0, 0.0, 0.3, 2.5, 6.5, 12.0]))
    kind = draw(st.sampled_from(["ok", "ok", "ok", "raw", "raw", "raw", "drop", "hang"]))
    if kind == "ok":
        big = draw(st.sampled_from([None, None, None, "x" * 5_000, "y" * 65_000]))
        return Answer("ok", delay=delay, token=big)
    if kind in ("drop", "hang"):
        return Answer(kind, delay=delay)
    status = draw(STATUSES)
    retry_after = draw(RETRY_AFTERS)
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        headers = (("Retry-After", retry_after),)
    body_kind = draw(
        st.sampled_from(["token", "odd-token", "error", "methods", "html", "cut", "bytes"])
    )
    if body_kind == "token":
        body = _json(
            {
                "access_token": f"raw-{draw(st.integers(0, 10**6))}",
                "token_type": draw(st.sampled_from(["Bearer", "bearer", "mac", "Bearer\r\n", 7])),
                "expires_in": draw(EXPIRES),
            }
        )
    elif body_kind == "odd-token":
        # json.dumps escapes a lone surrogate as \ud800, which json.loads decodes back.
        body = _json({"access_token": draw(ODD_TOKENS), "expires_in": draw(EXPIRES)})
    elif body_kind == "error":
        body = _json({"error": draw(st.sampled_from(["invalid_client", "invalid_request", 5]))})
    elif body_kind == "methods":
        body = METHODS_POST_ONLY
    elif body_kind == "html":
        body = b"<html><body>502 Bad Gateway</body></html>"
    elif body_kind == "cut":
        body = b'{"access_token": "tok", "expires_in": 60'
    else:
        body = draw(st.binary(max_size=64))
    return Answer("raw", status=status, body=body, headers=headers, delay=delay)
