"""One Lambda execution environment in its own process, driven over a pipe, for fleets.

Each process imports the handler once (a cold start: configuration, clients and runtime are
built in the child), keeps its memory tier between invocations and shares nothing with the others
but the moto server and the Igni stub. Children are forked from multiprocessing's fork server,
which has imported botocore and Powertools already (the tests start dozens; bench.run empties
PRELOAD, so that its ``import_ms`` is a whole cold import). ``LOCAL_HANDLER``
(``module:function``) in the environment replaces the real handler.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HANDLER_VAR = "LOCAL_HANDLER"
DEFAULT_HANDLER = "token_vendor.functions.api:lambda_handler"
# What the forked children find imported already: third-party code only, so that the function's
# own modules (and the Powertools objects they make from the environment) are the child's.
PRELOAD = ["botocore.session", "botocore.client", "urllib3", "aws_lambda_powertools.logging"]
PRELOAD += ["aws_lambda_powertools.metrics", "aws_lambda_powertools.event_handler"]
multiprocessing.set_forkserver_preload(PRELOAD)


def serve(conn: Connection, env: Mapping[str, str], log_path: str | None) -> None:
    """The child side: take the environment, import the handler, answer requests until EOF."""
    os.environ.clear()
    os.environ.update(env)
    # The handler's logs and EMF metrics go where Lambda would send them: here, the log file.
    log = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):  # a line at a time, as CloudWatch
        os.dup2(log, fd)
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    module_name, _, function_name = os.environ[HANDLER_VAR].partition(":")
    started = time.perf_counter()
    module = importlib.import_module(module_name)
    lambda_handler: Callable[[Any, Any], dict[str, Any]] = getattr(module, function_name)
    from local.lambda_context import FakeLambdaContext
    from token_vendor.functions.runtime import reset_runtime as vendor_reset

    # The vendor's functions share one runtime module; a baseline (bench) brings its own reset.
    reset_runtime: Callable[[], None] = getattr(module, "reset_runtime", None) or vendor_reset

    conn.send({"import_ms": (time.perf_counter() - started) * 1000.0})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request.get("reset"):
            reset_runtime()
            conn.send({"reset": True})
            continue
        context = FakeLambdaContext(timeout_s=int(request.get("timeout_ms", 25000)) / 1000.0)
        begun = time.perf_counter()
        response = lambda_handler(request["event"], context)
        conn.send({"response": response, "elapsed_ms": (time.perf_counter() - begun) * 1000.0})


class EnvironmentProcess:
    """The parent side: a child process that behaves as one execution environment."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path | None = None,
        handler: str | None = None,
    ) -> None:
        """Start the child; ``handler`` ("module:function") replaces the real handler."""
        # The real handler unless told otherwise here: the parent's own LOCAL_HANDLER is no order.
        child_env = {**os.environ, HANDLER_VAR: DEFAULT_HANDLER, **env}
        child_env[HANDLER_VAR] = handler or child_env[HANDLER_VAR]
        if not re.fullmatch(r"[\w.]+:\w+", child_env[HANDLER_VAR]):  # here, not in the child
            raise ValueError(f"handler must be 'module:function', got {child_env[HANDLER_VAR]!r}")
        context = multiprocessing.get_context("forkserver")
        self._conn, child_conn = context.Pipe()
        self._proc = context.Process(
            target=serve, args=(child_conn, child_env, str(log_path) if log_path else None)
        )
        self._proc.daemon = True  # A crashed test run leaves no environment behind.
        self._proc.start()
        child_conn.close()
        self._lock = threading.Lock()  # One invocation at a time, as in Lambda.
        try:
            self.import_ms = float(self._receive()["import_ms"])
        except BaseException:
            # A child that failed to start (or a Ctrl-C meanwhile) must not outlive us.
            self.kill()
            self.close()
            raise

    def _receive(self) -> dict[str, Any]:
        try:
            message: dict[str, Any] = self._conn.recv()
        except EOFError:
            self._proc.join(timeout=5)
            raise RuntimeError(f"environment process exited with {self._proc.exitcode}") from None
        return message

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._conn.send(request)
            return self._receive()

    def invoke(self, event: Mapping[str, Any], *, timeout_ms: int = 25000) -> dict[str, Any]:
        """The handler's response to one event (and ``elapsed_ms`` beside it)."""
        answer = self._call({"event": dict(event), "timeout_ms": timeout_ms})
        response: dict[str, Any] = answer["response"]
        response["elapsed_ms"] = answer["elapsed_ms"]
        return response

    def reset(self) -> None:
        self._call({"reset": True})

    def kill(self) -> None:
        """Die as a crashed environment would: no cleanup, no lease release."""
        self._proc.kill()
        self._proc.join(timeout=10)

    def close(self) -> None:
        self._conn.close()  # The child reads EOF and exits.
        self._proc.join(timeout=10)
        if self._proc.exitcode is None:
            self.kill()
