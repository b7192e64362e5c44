"""``make invoke EVENT=events/x.json``: what ``sam local invoke`` does, without Docker.

Runs the function's handler once on an event file against a local stack and prints the handler's
JSON answer on stdout (the function's own log lines go to stderr). The stack is the one ``make
local`` is serving when ``.local-state/env.json`` names a moto server that still answers;
otherwise a throw-away moto server, Igni stub and stack are made for this one call and removed.

The event's placeholder secret (``igni-token-vendor/local/default``) is replaced by the stack's,
so a ``Secret Label Updated`` event is about the secret the function actually reads.

An API Gateway event runs the API function's handler (TokenFunction's), any other event the
maintenance function's (MaintenanceFunction's: the pre-warm schedule and the rotation rule).

Exit status: 0 when the handler returned (whatever the HTTP status inside), 1 when it raised
(printed as Lambda reports it: errorMessage, errorType, stackTrace), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.api_server import Handler
from local.cfn_template import load_template, resource_properties
from local.events import event_path, load_event, substitute_secret
from local.lambda_context import FakeLambdaContext
from local.moto_server import answers_http
from local.run import STATE_FILE, LocalEnvironment, load_handler


@dataclass(frozen=True)
class Target:
    """Where the invocation runs: the function env and the stack's secret."""

    function_env: dict[str, str]
    secret_arn: str
    secret_name: str
    function_name: str
    timeout_s: float
    source: str  # "make local" or "ephemeral"


@dataclass(frozen=True)
class InvokeResult:
    """The handler's answer, or the error it raised in Lambda's error shape."""

    response: Any
    error: dict[str, Any] | None
    target: Target

    @property
    def ok(self) -> bool:
        return self.error is None


def running_stack(state_file: Path) -> Target | None:
    """The stack `make local` serves, if its state file exists and its moto server answers."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        endpoint = urllib.parse.urlsplit(state["moto_endpoint"])
        stack = state["stack"]
        env = state["function_env"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not answers_http(endpoint.hostname or "127.0.0.1", endpoint.port or 80, timeout=1.0):
        return None
    return Target(
        function_env=dict(env),
        secret_arn=stack["secret_arn"],
        secret_name=stack["secret_name"],
        function_name=stack.get("function_name", "local-TokenFunction"),
        timeout_s=float(state.get("function_timeout_s", 25.0)),
        source="make local",
    )


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in os.environ for the block, then put everything back as it was."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def target_stack(state_file: Path = STATE_FILE, *, ephemeral: bool = False) -> Iterator[Target]:
    """The running `make local` stack, or a throw-away one removed when the block ends."""
    target = None if ephemeral else running_stack(state_file)
    if target is not None:
        yield target
        return
    local = LocalEnvironment()
    with local as stack:
        yield Target(
            function_env=local.function_env,
            secret_arn=stack.secret_arn,
            secret_name=stack.secret_name,
            function_name=stack.function_name,
            timeout_s=stack.function_timeout_s,
            source="ephemeral",
        )


def lambda_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    """An exception as the Lambda Python runtime reports an unhandled one."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def invoke_event(
    event: Mapping[str, Any] | str | Path,
    *,
    handler: Handler | str | None = None,
    state_file: Path = STATE_FILE,
    ephemeral: bool = False,
) -> InvokeResult:
    """Run the handler once on ``event`` (a dict, an events/ name or a file path).

    ``handler`` is a callable, a ``module:function`` / ``module.function`` name, or None for
    the Handler template.yaml gives the function that receives the event (handler_for).
    os.environ is restored afterwards.
    """
    with target_stack(state_file, ephemeral=ephemeral) as target:
        raw = dict(event) if isinstance(event, Mapping) else load_event(str(event))
        payload = substitute_secret(raw, target.secret_arn, target.secret_name)
        # Lambda delivers JSON: what cannot round-trip cannot reach a real function either.
        payload = json.loads(json.dumps(payload))
        with patched_environ(target.function_env), contextlib.redirect_stdout(sys.stderr):
            # The function logs to stdout (CloudWatch in Lambda); here stdout is for the answer.
            # Import inside the redirect so loggers made at import bind to stderr too.
            fn = handler if callable(handler) else load_handler(handler or handler_for(payload))
            context = FakeLambdaContext(
                timeout_s=target.timeout_s, function_name=target.function_name
            )
            # Each invoke is a cold start, as with `sam local invoke`: no runtime cached by an
            # earlier in-process invoke (against another stack) may answer this one.
            _reset_runtime(fn)
            try:
                response = json.loads(json.dumps(fn(payload, context)))
            except Exception as exc:
                return InvokeResult(None, lambda_error(exc, context.aws_request_id), target)
            finally:
                _reset_runtime(fn)
        return InvokeResult(response, None, target)


def handler_for(event: Any) -> str:
    """The Handler of the template's function that receives ``event``: TokenFunction for an API
    Gateway event (it has httpMethod or requestContext), MaintenanceFunction for any other."""
    is_api = isinstance(event, dict) and ("httpMethod" in event or "requestContext" in event)
    function = "TokenFunction" if is_api else "MaintenanceFunction"
    return str(resource_properties(load_template(), function)["Handler"])


def _reset_runtime(fn: Handler) -> None:
    """Call ``reset_runtime()`` of the handler's module, if it has one."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    reset = getattr(module, "reset_runtime", None)
    if callable(reset):
        reset()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoke", description="make invoke")
    parser.add_argument("event", help="event file, e.g. events/get_token.json")
    parser.add_argument("--handler", default=None, help="module:function (default: template's)")
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    parser.add_argument(
        "--ephemeral", action="store_true", help="ignore a running `make local`; own stack"
    )
    args = parser.parse_args(argv)
    if not event_path(args.event).exists():
        print(f"make invoke: no event file {args.event}", file=sys.stderr)
        return 2
    result = invoke_event(
        args.event, handler=args.handler, state_file=args.state_file, ephemeral=args.ephemeral
    )
    print(f"make invoke: ran against the {result.target.source} stack", file=sys.stderr)
    print(json.dumps(result.response if result.ok else result.error, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
