"""``make invoke EVENT=events/x.json``: ``sam local invoke`` without Docker (docs/local.md).

The handler once, as a cold start, against the stack ``make local`` serves, else a throw-away
one; its answer on stdout, its logs on stderr; exit 1 when it raised, 2 for a usage error."""

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
    with target_stack(state_file, ephemeral=ephemeral) as target:
        raw = dict(event) if isinstance(event, Mapping) else load_event(str(event))
        # Lambda delivers JSON: what cannot round-trip cannot reach a real function either.
        stack = target["stack"]
        secret = (stack["secret_arn"], stack["secret_name"])
        payload = json.loads(json.dumps(substitute_secret(raw, *secret)))
        env = target["function_env"]
        # The function logs to stdout (CloudWatch in Lambda); here stdout is for the answer. The
        # import happens inside the redirect so that loggers made at import bind to stderr too.
        with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(sys.stderr):
            fn = handler if callable(handler) else load_handler(handler or handler_for(payload))
            timeout_s = float(target.get("function_timeout_s", 25.0))
            name = stack.get("function_name", "local-TokenFunction")
            context = FakeLambdaContext(timeout_s=timeout_s, function_name=name)
            # A cold start, as with `sam local invoke`: nothing cached by an earlier in-process
            # invoke (against another stack) may answer this one.
            module = sys.modules.get(getattr(fn, "__module__", "") or "")
            reset = getattr(module, "reset_runtime", None) or (lambda: None)
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


def handler_for(event: Any) -> str:
    """The Handler of the template's function that receives ``event``: TokenFunction for an API
    Gateway event (it has httpMethod or requestContext), MaintenanceFunction for any other."""
    is_api = isinstance(event, dict) and ("httpMethod" in event or "requestContext" in event)
    function = "TokenFunction" if is_api else "MaintenanceFunction"
    return str(resource_properties(load_template(), function)["Handler"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoke", description="make invoke")
    parser.add_argument("event", help="event file, e.g. events/get_token.json")
    parser.add_argument("--handler", default=None, help="module:function (default: template's)")
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    parser.add_argument("--ephemeral", action="store_true", help="ignore a running make local")
    args = parser.parse_args(argv)
    if not event_path(args.event).exists():
        print(f"make invoke: no event file {args.event}", file=sys.stderr)
        return 2
    result = invoke_event(
        args.event, handler=args.handler, state_file=args.state_file, ephemeral=args.ephemeral
    )
    print(f"make invoke: ran against the {result.target['source']} stack", file=sys.stderr)
    print(json.dumps(result.response if result.ok else result.error, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
