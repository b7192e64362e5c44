"""A token endpoint that answers raw bytes: the real urllib3 client and parser over a real socket.

Whatever comes back (no HTTP at all, a broken status line, a lying Content-Length, bad chunks,
a compressed body that is not, a header line of 70 KB, a body dripped slower than the deadline),
the exchange ends in a typed error of the contract or a token, within its deadline, and nothing
else escapes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from token_vendor.errors import VendorError
from token_vendor.igni.client import IgniClient
from token_vendor.igni.watchdog import deadline_pool_manager

TOKEN_JSON = b'{"access_token": "tok", "token_type": "Bearer", "expires_in": 600}'


def answer(headers: bytes, body: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body


RAW = {
    "not http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "bad status line": b"HTTP/1.1 two hundred\r\n\r\n",
    "status 999": b"HTTP/1.1 999 What\r\nContent-Length: 0\r\n\r\n",
    "short body": answer(b"Content-Length: 100\r\n", b'{"access_token": "t'),
    "bad chunk size": answer(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    "gzip that is not": answer(b"Content-Encoding: gzip\r\nContent-Length: 4\r\n", b"junk"),
    "unknown encoding": answer(b"Content-Encoding: zz\r\nContent-Length: 2\r\n", b"{}"),
    "huge header": answer(b"X-Pad: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n", b"{}"),
    "NUL in header": answer(b"X-Bad: \x00\x01\r\nContent-Length: 2\r\n", b"{}"),
    "non-latin body": answer(b"Content-Length: 4\r\n", "\u00e9\u00e9".encode()),
    "empty": b"",
    "token but closed early": answer(b"Content-Length: 500\r\n", TOKEN_JSON),
    "valid token": answer(f"Content-Length: {len(TOKEN_JSON)}\r\n".encode(), TOKEN_JSON),
}


class RawServer:
    """Answers every connection with the bytes it is given, then closes (or drips them)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.payload = b""
        self.drip: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)
                if self.drip is None:
                    conn.sendall(self.payload)
                    return
                for byte in self.payload:
                    if self._stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(self.drip)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RawServer]:
    running = RawServer()
    yield running
    running.close()


def exchange(server: RawServer, seconds: float) -> tuple[object, float]:
    client = IgniClient(
        deadline_pool_manager(retries=False), read_timeout=1.0, max_attempts=2, backoff_max=0.05
    )
    started = time.monotonic()
    try:
        outcome: object = client.exchange(
            f"http://127.0.0.1:{server.port}/token",
            "id",
            "secret",
            deadline=started + seconds,
        )
    except VendorError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


@pytest.mark.parametrize("case", sorted(RAW))
def test_any_raw_answer_is_a_token_or_a_typed_error(server: RawServer, case: str) -> None:
    # Given an endpoint answering these bytes
    server.payload, server.drip = RAW[case], None
    # When the client exchanges with 3 s to go
    outcome, took = exchange(server, 3.0)
    # Then it is a token or an error of the contract (never another exception), in time
    if case == "valid token":
        assert getattr(outcome, "access_token", None) == "tok"
    else:
        assert isinstance(outcome, VendorError), outcome
        assert outcome.status in (502, 503)
    assert took < 3.5


def test_an_answer_dripped_within_the_read_timeout_stops_at_the_deadline(
    server: RawServer,
) -> None:
    # Given an endpoint that sends a valid answer, status line and headers too, one byte every
    # 0.3 s (each socket read well within the read timeout)
    server.payload = RAW["valid token"]
    server.drip = 0.3
    # When the client has 1.5 s
    outcome, took = exchange(server, 1.5)
    # Then it gives up near the deadline, not when the answer ends (about 30 s)
    assert isinstance(outcome, VendorError)
    assert outcome.status == 503
    assert took < 3.0
    server.drip = None
