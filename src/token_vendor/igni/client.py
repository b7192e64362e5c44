"""The Igni OAuth2 client-credentials exchange over urllib3, with a deadline-aware retry loop.

urllib3's own `Retry` does not retry POST by default and knows nothing of the Lambda deadline,
so each attempt is made with `retries=False` and an explicit `Timeout`, and this loop decides
whether another attempt (after capped, jittered backoff or the server's `Retry-After`) still
fits in the time left.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import urllib3

from token_vendor.config import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    DEFAULT_REFRESH_BACKOFF_MAX_SECONDS,
    Profile,
)
from token_vendor.errors import (
    ConfigurationError,
    UpstreamUnavailable,
)
from token_vendor.igni.answers import (
    MAX_BODY_BYTES,
    IssuedToken,
    basic_challenge,
    parse_token,
    rejection,
    retry_after_seconds,
)
from token_vendor.igni.request import token_request
from token_vendor.igni.token_url import token_url_problem
from token_vendor.igni.watchdog import cut_after
from token_vendor.models import Credentials

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Below this much time left an attempt cannot succeed; give up instead of starting one.
MIN_ATTEMPT_SECONDS = 0.25
AttemptObserver = Callable[[str, float], None]


class IgniClient:
    """Exchanges client credentials for an access token at an Igni token URL."""

    def __init__(
        self,
        http: urllib3.PoolManager,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 2.0,
        retry_after_max: float = DEFAULT_REFRESH_BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        self._http = http
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        # A server's Retry-After is believed up to this long (the fleet's backoff cap).
        self._retry_after_max = retry_after_max
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._jitter = jitter
        self._on_attempt = on_attempt

    def exchange_for(
        self,
        profile: Profile,
        token_url: str,
        credentials: Credentials,
        *,
        deadline: float,
        on_attempt: AttemptObserver | None = None,
    ) -> IssuedToken:
        """Exchange one version of a profile's credentials the way the profile asks: its
        scope, audience and client authentication (the vendor and the rotation function)."""
        return self.exchange(
            token_url,
            credentials.client_id,
            credentials.client_secret,
            deadline=deadline,
            scope=profile.scope,
            audience=profile.audience,
            resource=profile.resource,
            auth_method=profile.token_endpoint_auth_method,
            on_attempt=on_attempt,
        )

    def exchange(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        deadline: float,
        scope: str | None = None,
        audience: str | None = None,
        resource: tuple[str, ...] = (),
        auth_method: str = CLIENT_SECRET_POST,
        on_attempt: AttemptObserver | None = None,
    ) -> IssuedToken:
        """POST the client-credentials grant; `deadline` is on this client's clock.

        The client authenticates with `auth_method`: client_secret_post puts the id and secret
        in the form, client_secret_basic in the Authorization header (and not in the form).
        """
        # Checked again where it is sent (config checks it first): the credentials go only
        # where urllib3 itself reads the URL to point, and nowhere if that is not allowed.
        problem = token_url_problem(token_url)
        if problem is not None:
            raise ConfigurationError(f"the Igni token URL {problem}; nothing was sent")
        observe = on_attempt or self._on_attempt
        body, headers = token_request(
            client_id,
            client_secret,
            scope=scope,
            audience=audience,
            resource=resource,
            auth_method=auth_method,
        )
        last_error = UpstreamUnavailable("Igni could not be reached before the deadline")
        for attempt in range(1, self._max_attempts + 1):
            remaining = deadline - self._clock()
            if remaining < MIN_ATTEMPT_SECONDS:
                break
            started = self._clock()
            try:
                with cut_after(remaining):
                    response = self._http.request(
                        "POST",
                        token_url,
                        body=body,
                        headers=headers,
                        timeout=urllib3.Timeout(
                            connect=min(self._connect_timeout, remaining),
                            read=min(self._read_timeout, remaining),
                            total=remaining,
                        ),
                        retries=False,
                        redirect=False,
                        preload_content=False,
                    )
                    try:
                        payload = self._read_body(response, deadline, token_url)
                    finally:
                        response.release_conn()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # NewConnectionError subclasses ConnectTimeoutError in urllib3: test it first.
                timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                    exc, urllib3.exceptions.NewConnectionError
                )
                kind = "timeout" if timed_out else "connection"
                self._observe(observe, kind, started)
                last_error = UpstreamUnavailable(
                    f"Igni could not be reached ({kind}: {type(exc).__name__})"
                )
                last_error.kind = kind
                retry_after = None
            else:
                status = response.status
                if 200 <= status < 300:
                    self._observe(observe, "ok", started)
                    return parse_token(payload)
                if status not in RETRYABLE_STATUSES:
                    self._observe(observe, "auth" if status == 401 else "rejected", started)
                    raise rejection(
                        status,
                        payload,
                        auth_method=auth_method,
                        basic_wanted=auth_method != CLIENT_SECRET_BASIC
                        and basic_challenge(response.headers.get("WWW-Authenticate")),
                    )
                kind = "throttled" if status == 429 else "server_error"
                self._observe(observe, kind, started)
                retry_after = retry_after_seconds(
                    response.headers.get("Retry-After"), now=self._wall(), cap=self._retry_after_max
                )
                last_error = UpstreamUnavailable(
                    f"Igni answered HTTP {status}", retry_after=_ceil(retry_after)
                )
                last_error.kind = kind
            if attempt == self._max_attempts:
                break
            delay = self._backoff(attempt, retry_after)
            if self._clock() + delay + MIN_ATTEMPT_SECONDS > deadline:
                break
            self._sleep(delay)
        if last_error.retry_after is None:
            last_error.retry_after = max(1, _ceil(self._backoff_max) or 1)
        raise last_error

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float, url: str) -> bytes:
        """At most MAX_BODY_BYTES + 1 bytes, and never past the deadline.

        The read timeout bounds each socket read, not the body: a server dripping a byte now and
        then would hold a plain read() for as long as it likes. read1() returns what one read
        gives, so the deadline is checked between them.
        """
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            if self._clock() >= deadline:
                raise urllib3.exceptions.ReadTimeoutError(None, url, "body past the deadline")  # type: ignore[arg-type]
            chunk = response.read1(MAX_BODY_BYTES + 1 - size, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        capped = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        # Full jitter spreads the retries of many environments hitting the same outage.
        delay: float = capped * self._jitter()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _observe(self, observe: AttemptObserver | None, outcome: str, started: float) -> None:
        if observe is not None:
            observe(outcome, (self._clock() - started) * 1000.0)


def _ceil(value: float | None) -> int | None:
    return None if value is None else max(1, math.ceil(value))
