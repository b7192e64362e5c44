"""One Lambda execution environment in its own process, driven over stdin/stdout.

Tests and the benchmark start several of these to see what a fleet does: each process imports
the handler once (a cold start), keeps its memory tier between invocations (warm starts), and
shares nothing with the others but the moto server and the Igni stub. Protocol: one JSON line
in, `{"event": {...}, "timeout_ms": 25000}` or `{"sleep": 0.5}` or `{"reset": true}`
(a brand-new environment in the same process), one JSON line out per line in, `{"response":
{...}, "elapsed_ms": 1.2}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def serve() -> None:
    """The child side: read requests, invoke the handler, answer."""
    # The handler's logs and EMF metrics go where Lambda would send them (here: stderr, which
    # the parent keeps in a log file); stdout carries only this protocol.
    protocol = sys.stdout
    sys.stdout = sys.stderr
    started = time.perf_counter()
    from token_vendor import handler

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
            handler.reset_runtime()
            print(json.dumps({"reset": True}), file=protocol, flush=True)
            continue
        context = FakeLambdaContext(timeout_s=int(request.get("timeout_ms", 25000)) / 1000.0)
        begun = time.perf_counter()
        response = handler.lambda_handler(request["event"], context)
        elapsed = (time.perf_counter() - begun) * 1000.0
        print(json.dumps({"response": response, "elapsed_ms": elapsed}), file=protocol, flush=True)


class EnvironmentProcess:
    """The parent side: a child process that behaves as one execution environment."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path | None = None) -> None:
        child_env = {**os.environ, **env}
        child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
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
        ready = self._read()
        self.import_ms = float(ready["import_ms"])

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"environment process exited with {self._proc.poll()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def _send(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
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
            assert self._proc.stdin is not None
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
