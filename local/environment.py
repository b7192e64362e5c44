"""One Lambda execution environment in its own process, driven over stdin/stdout, for fleets.

Each process imports the handler once (a cold start), keeps its memory tier between invocations
and shares nothing with the others but the moto server and the Igni stub. One JSON line in
(`{"event": {...}, "timeout_ms": 25000}`, `{"sleep": 0.5}`, or `{"reset": true}`: a brand-new
environment, through the module's `reset_runtime()`), one out (`{"response": {...},
"elapsed_ms": 1.2}`). `LOCAL_HANDLER` (`module:function`) replaces the real handler.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, cast

ROOT = Path(__file__).resolve().parent.parent
HANDLER_VAR = "LOCAL_HANDLER"
DEFAULT_HANDLER = "token_vendor.handler:lambda_handler"


def _split_handler(spec: str) -> tuple[str, str]:
    module, sep, function = spec.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"handler must be 'module:function', got {spec!r}")
    return module, function


def serve() -> None:
    """The child side: read requests, invoke the handler, answer."""
    # The handler's logs and EMF metrics go where Lambda would send them (here: stderr, which
    # the parent keeps in a log file); stdout carries only this protocol.
    protocol = sys.stdout
    sys.stdout = sys.stderr
    module_name, function_name = _split_handler(os.environ.get(HANDLER_VAR) or DEFAULT_HANDLER)
    started = time.perf_counter()
    module = importlib.import_module(module_name)
    lambda_handler: Callable[[Any, Any], dict[str, Any]] = getattr(module, function_name)
    reset_runtime: Callable[[], None] | None = getattr(module, "reset_runtime", None)

    from local.lambda_context import FakeLambdaContext

    import_ms = (time.perf_counter() - started) * 1000.0
    print(json.dumps({"ready": True, "import_ms": import_ms}), file=protocol, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "sleep" in request:
            time.sleep(float(request["sleep"]))
            print(json.dumps({"slept": True}), file=protocol, flush=True)
            continue
        if request.get("reset"):
            if reset_runtime is not None:
                reset_runtime()
            print(json.dumps({"reset": True}), file=protocol, flush=True)
            continue
        context = FakeLambdaContext(timeout_s=int(request.get("timeout_ms", 25000)) / 1000.0)
        begun = time.perf_counter()
        response = lambda_handler(request["event"], context)
        elapsed = (time.perf_counter() - begun) * 1000.0
        print(json.dumps({"response": response, "elapsed_ms": elapsed}), file=protocol, flush=True)


class EnvironmentProcess:
    """The parent side: a child process that behaves as one execution environment."""

    def __init__(
        self, env: Mapping[str, str], *, log_path: Path | None = None, handler: str | None = None
    ) -> None:
        """Start the child; `handler` ("module:function") replaces the real handler."""
        child_env = {**os.environ, **env}
        child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        if handler is not None:
            _split_handler(handler)
            child_env[HANDLER_VAR] = handler
        elif HANDLER_VAR not in env:
            # The real handler, whatever the parent's own environment says.
            child_env.pop(HANDLER_VAR, None)
        self.handler = child_env.get(HANDLER_VAR, DEFAULT_HANDLER)
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "local.environment"],
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        try:
            ready = self._read()
        except BaseException:
            # A child that failed to start (or a Ctrl-C meanwhile) must not outlive us.
            self.kill()
            self.close()
            raise
        self.import_ms = float(ready["import_ms"])

    def _read(self) -> dict[str, Any]:
        line = cast(IO[str], self._proc.stdout).readline()
        if not line:
            raise RuntimeError(f"environment process exited with {self._proc.poll()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def _send(self, request: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            stdin = cast(IO[str], self._proc.stdin)
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            return self._read()

    def invoke(self, event: Mapping[str, Any], *, timeout_ms: int = 25000) -> dict[str, Any]:
        """The handler's response to one event (and `elapsed_ms` beside it)."""
        answer = self._send({"event": event, "timeout_ms": timeout_ms})
        response: dict[str, Any] = answer["response"]
        response["elapsed_ms"] = answer["elapsed_ms"]
        return response

    def sleep(self, seconds: float) -> None:
        self._send({"sleep": seconds})

    def reset(self) -> None:
        self._send({"reset": True})

    def kill(self) -> None:
        """Die as a crashed environment would: no cleanup, no lease release."""
        self._proc.kill()
        self._proc.wait(timeout=10)

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]


if __name__ == "__main__":
    serve()
