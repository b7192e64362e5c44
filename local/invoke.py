"""``make invoke EVENT=path/to/event.json``: ``sam local invoke`` without Docker (docs/local.md).

The handler of the function that receives the event (by its shape: an API Gateway proxy event
goes to the token function, a schedule or ``Secret Label Updated`` event to the maintenance
function, a Secrets Manager rotation step to the rotation function) once, as a cold start,
with that function's environment and name, against the stack ``make local`` serves, else a
throw-away one; its answer on stdout, its logs on stderr; exit 1 when it raised, 2 (one line)
for a usage error: no such file, not JSON, an event no function receives."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import urllib3

from local.cfn_template import load_template, resource_properties
from local.events import event_path, load_event, substitute_secret
from local.gateway.server import Handler
from local.lambda_context import FakeLambdaContext
from local.run import STATE_FILE, LocalEnvironment, load_handler
from token_vendor.functions.runtime import reset_runtime


class BadEventFile(ValueError):
    """An event file that cannot be read as a JSON object."""


def read_event(name: str) -> dict[str, Any]:
    """The event in file ``name`` (any path, or an events/ name): OSError or ValueError, each
    with a message of one line, when it is missing, unreadable or not a JSON object."""
    path = event_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such event file: {name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadEventFile(f"cannot read {path}: {exc}") from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadEventFile(
            f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(event, dict):
        raise BadEventFile(f"{path} is not a JSON object (an event is one)")
    return event


@dataclass(frozen=True)
class InvokeResult:
    """The handler's answer, or the error it raised in Lambda's error shape, and the stack's state
    (as ``.local-state/env.json`` has it, with ``source``: "make local" or "ephemeral")."""

    response: Any
    error: dict[str, Any] | None
    target: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def target_stack(state_file: Path = STATE_FILE, *, ephemeral: bool = False) -> Iterator[Any]:
    """The state of the stack `make local` serves, or of a throw-away one while the block runs."""
    try:
        state = {} if ephemeral else json.loads(state_file.read_text(encoding="utf-8"))
        # moto's dashboard path answers cheaply and changes nothing (unlike /moto-api/reset).
        urllib3.request("GET", f"{state['moto_endpoint']}/moto-api/", timeout=1.0, retries=False)
        live = True
    except (OSError, ValueError, KeyError, TypeError, urllib3.exceptions.HTTPError):
        live = False
    if live:
        yield {**state, "source": "make local"}
        return
    local = LocalEnvironment()
    with local:
        yield {**local.state(None, None), "source": "ephemeral"}


def invoke_event(
    event: Mapping[str, Any] | str | Path,
    *,
    handler: Handler | str | None = None,
    state_file: Path = STATE_FILE,
    ephemeral: bool = False,
) -> InvokeResult:
    """Run the handler once on ``event`` (a dict, an events/ name or a file path). ``handler``: a
    callable, ``module:function`` / ``module.function``, or None for the Handler template.yaml
    gives the function that receives the event (handler_for)."""
    raw = dict(event) if isinstance(event, Mapping) else load_event(str(event))
    # An explicit handler runs whatever the event; it gets the API function's environment
    # unless the event's shape names another function.
    function = function_for(raw) if handler is None else _function_or_none(raw)
    with target_stack(state_file, ephemeral=ephemeral) as target:
        # Lambda delivers JSON: what cannot round-trip cannot reach a real function either.
        stack = target["stack"]
        secret = (stack["secret_arn"], stack["secret_name"])
        payload = json.loads(json.dumps(substitute_secret(raw, *secret)))
        envs = target.get("function_envs") or {}
        env = envs.get(function) or target["function_env"]
        # The function logs to stdout (CloudWatch in Lambda); here stdout is for the answer. The
        # import happens inside the redirect so that loggers made at import bind to stderr too.
        with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(sys.stderr):
            spec = handler or (_handler_of(function) if function else None)
            fn = spec if callable(spec) else load_handler(spec)
            timeout_s = float(target.get("function_timeout_s", 25.0))
            name = env.get("AWS_LAMBDA_FUNCTION_NAME") or stack.get("function_name", "local")
            context = FakeLambdaContext(timeout_s=timeout_s, function_name=name)
            # A cold start, as with `sam local invoke`: nothing cached by an earlier in-process
            # invoke (against another stack) may answer this one.
            module = sys.modules.get(getattr(fn, "__module__", "") or "")
            reset = getattr(module, "reset_runtime", None) or reset_runtime
            try:
                reset()
                return InvokeResult(json.loads(json.dumps(fn(payload, context))), None, target)
            except Exception as exc:
                error = {
                    "errorMessage": str(exc),
                    "errorType": type(exc).__name__,
                    "requestId": context.aws_request_id,
                    "stackTrace": traceback.format_tb(exc.__traceback__),
                }
                return InvokeResult(None, error, target)
            finally:
                reset()


class UnknownEvent(ValueError):
    """An event that no function of the template receives."""


ROTATION_KEYS = frozenset({"SecretId", "ClientRequestToken", "Step"})
UNKNOWN = (
    "no function receives this event: expected an API Gateway proxy event (httpMethod or "
    "requestContext), an EventBridge event (source, detail-type: a schedule, Secret Label "
    "Updated, or the pre-warm action) or a rotation step (SecretId, ClientRequestToken, Step)"
)


def function_for(event: Any) -> str:
    """The logical id of the template's function that receives ``event``, by its shape:
    TokenFunction (API Gateway proxy event), RotationFunction (a Secrets Manager rotation step),
    MaintenanceFunction (an EventBridge event: schedule, ``Secret Label Updated``, pre-warm)."""
    if not isinstance(event, dict):
        raise UnknownEvent(f"{UNKNOWN}; got a JSON {type(event).__name__}")
    if "httpMethod" in event or "requestContext" in event:
        return "TokenFunction"
    if event.keys() >= ROTATION_KEYS:
        return "RotationFunction"
    if {"source", "detail-type", "action"} & event.keys():
        return "MaintenanceFunction"
    raise UnknownEvent(UNKNOWN)


def _function_or_none(event: Any) -> str | None:
    try:
        return function_for(event)
    except UnknownEvent:
        return None


def _handler_of(function: str) -> str:
    return str(resource_properties(load_template(), function)["Handler"])


def handler_for(event: Any) -> str:
    """The Handler (template.yaml) of the function that receives ``event`` (function_for)."""
    return _handler_of(function_for(event))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoke", description="make invoke")
    parser.add_argument("event", help="event file, e.g. events/get_token.json")
    parser.add_argument("--handler", default=None, help="module:function (default: template's)")
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    parser.add_argument("--ephemeral", action="store_true", help="ignore a running make local")
    args = parser.parse_args(argv)
    try:
        event = read_event(args.event)
        if args.handler is None:
            function_for(event)  # before any server starts
    except (OSError, ValueError) as exc:  # no file, not JSON, no function for it: one line
        print(f"make invoke: {exc}", file=sys.stderr)
        return 2
    result = invoke_event(
        event, handler=args.handler, state_file=args.state_file, ephemeral=args.ephemeral
    )
    print(f"make invoke: ran against the {result.target['source']} stack", file=sys.stderr)
    print(json.dumps(result.response if result.ok else result.error, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
