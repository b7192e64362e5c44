"""``make local``: the whole service on loopback, no Docker, no AWS account.

A moto server (AWS), the Igni stub (unless ``IGNI_WORKSPACE``, ``IGNI_CLIENT_ID`` and
``IGNI_CLIENT_SECRET`` name the real Igni), the stack's table, key and secret created from
template.yaml, and the API function served on http://127.0.0.1:3000 as API Gateway serves it
(:mod:`local.gateway`), until Ctrl-C. ``--profiles`` / ``LOCAL_PROFILES`` adds credential
profiles, each with its own stub client and secret. ``.local-state/env.json`` tells other
commands (``make invoke``, the benchmark) where the stack is: endpoints, names and the function
environment, no secret but the stub's fake credentials.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import textwrap
import threading
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError

from local.cfn_template import REPO_ROOT, api_function, load_template, resource_properties
from local.gateway.auth import LocalAuth, PolicyError, local_auth
from local.gateway.server import DEFAULT_API_ID, DEFAULT_STAGE, ApiServer, Handler
from local.gateway.sigv4 import DEFAULT_LOCAL_USER_ARN, LOCAL_TEST_ACCESS_KEY_ID
from local.gateway.sigv4 import LOCAL_TEST_SECRET_ACCESS_KEY as TEST_SECRET
from local.igni_stub import StubProcess
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer
from local.stack import DEFAULT_REGION, LocalStack, create_stack

STATE_FILE = REPO_ROOT / ".local-state" / "env.json"
STUB_CLIENT_ID = "local-client"
STUB_CLIENT_SECRET = "local-secret"
STUB_WORKSPACE = "local"
PROFILES_VAR = "LOCAL_PROFILES"
# The function's rule for profile names; "default" is the stack's own secret and "refresh"
# would be shadowed by the literal /token/refresh resource.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def local_region(environ: Mapping[str, str] | None = None) -> str:
    """AWS_REGION, AWS_DEFAULT_REGION, the profile's, else us-east-1: what igni-token signs for."""
    env = os.environ if environ is None else environ
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name, "").strip():
            return env[name].strip()
    try:
        configured = botocore.session.Session().get_config_variable("region")
    except BotoCoreError:  # e.g. AWS_PROFILE names a profile that does not exist
        configured = None
    return configured if isinstance(configured, str) and configured else DEFAULT_REGION


def parse_profiles(spec: str | None) -> tuple[str, ...]:
    """``"analytics,billing"`` -> ("analytics", "billing"); ValueError naming a bad name."""
    names: list[str] = []
    for name in filter(None, (raw.strip() for raw in (spec or "").split(","))):
        if not _PROFILE_NAME.match(name) or name in {"default", "refresh"}:
            raise ValueError(
                f"profile {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(not 'default' or 'refresh')"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def stub_client(profile: str) -> tuple[str, str]:
    """The stub's (fake) client id and secret for an extra profile."""
    return f"local-{profile}", f"local-{profile}-secret"


@dataclass(frozen=True)
class RealIgni:
    """Credentials for the real Igni, from the environment of ``make local``."""

    workspace: str
    client_id: str
    client_secret: str
    token_url: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> RealIgni | None:
        """None when IGNI_WORKSPACE is unset; ValueError when it is set without the credentials."""
        workspace = environ.get("IGNI_WORKSPACE", "").strip()
        if not workspace:
            return None
        client_id = environ.get("IGNI_CLIENT_ID", "").strip()
        client_secret = environ.get("IGNI_CLIENT_SECRET", "")
        if not client_id or not client_secret:
            raise ValueError(
                "IGNI_WORKSPACE is set, so the real Igni is used: set IGNI_CLIENT_ID and "
                "IGNI_CLIENT_SECRET too (or unset IGNI_WORKSPACE to use the local stub)"
            )
        return cls(workspace, client_id, client_secret, environ.get("IGNI_TOKEN_URL") or None)


class LocalEnvironment:
    """A moto server, the Igni stub (or real Igni) and one stack on it; stop() undoes it all."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        moto_port: int = 0,
        stub_port: int = 0,
        stack_name: str | None = None,
        region: str = DEFAULT_REGION,
        real_igni: RealIgni | None = None,
        profiles: Sequence[str] = (),
        quiet: bool = True,
    ) -> None:
        if profiles and real_igni is not None:
            raise ValueError(
                "extra profiles need the Igni stub (each gets its own stub client); "
                "unset IGNI_WORKSPACE or drop --profiles / LOCAL_PROFILES"
            )
        self.host, self.stub_port, self.quiet = host, stub_port, quiet
        self.moto = MotoServer(host, moto_port)
        self.stub: StubProcess | None = None
        self.real_igni = real_igni
        self.profiles = tuple(profiles)
        self.stack_name = stack_name or f"local-{uuid.uuid4().hex[:8]}"
        self.region = region
        self.stack: LocalStack | None = None
        # Taken once at start, before anyone copies it into os.environ.
        self.function_env: dict[str, str] = {}

    @property
    def mode(self) -> str:
        return "stub" if self.real_igni is None else "igni"

    def start(self) -> LocalStack:
        try:
            endpoint = self.moto.start()
            real = self.real_igni or RealIgni(STUB_WORKSPACE, STUB_CLIENT_ID, STUB_CLIENT_SECRET)
            if self.real_igni is None:
                clients = [(STUB_CLIENT_ID, STUB_CLIENT_SECRET), *map(stub_client, self.profiles)]
                self.stub = StubProcess(
                    dict(clients), host=self.host, port=self.stub_port, quiet=self.quiet
                )
            self.stack = create_stack(
                self.stack_name,
                endpoint_url=endpoint,
                region=self.region,
                secret_value={
                    "client_id": real.client_id,
                    "client_secret": real.client_secret,
                    "workspace": real.workspace,
                },
                igni_workspace=None if self.stub else real.workspace,
                igni_token_url=self.stub.token_url if self.stub else real.token_url,
            )
            self.function_env = self.stack.function_env()
            # Always set, so an IGNI_PROFILES in the shell never reaches the local function.
            self.function_env["IGNI_PROFILES"] = self._create_profiles(self.stack)
        except BaseException:
            self.stop()
            raise
        return self.stack

    def _create_profiles(self, stack: LocalStack) -> str:
        """One secret per extra profile, holding its stub client; IGNI_PROFILES for them."""
        if not self.profiles or self.stub is None:
            return ""
        profiles: dict[str, dict[str, str]] = {}
        for name in self.profiles:
            client_id, client_secret = stub_client(name)
            secret = stack.secretsmanager().create_secret(
                Name=f"igni-token-vendor/{stack.name}/{name}",
                SecretString=json.dumps(
                    {"client_id": client_id, "client_secret": client_secret, "workspace": "local"}
                ),
                Tags=[{"Key": "aws:cloudformation:stack-name", "Value": stack.name}],
            )
            profiles[name] = {"secret_id": secret["ARN"], "token_url": self.stub.token_url}
        return json.dumps(profiles)

    def stop(self) -> None:
        if self.stub is not None:
            self.stub.stop()
        self.moto.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self, api_url: str | None, auth: LocalAuth | None) -> dict[str, Any]:
        """What .local-state/env.json holds: endpoints, names, function env; no real secret."""
        if self.stack is None:
            raise RuntimeError("not started")
        stub = self.stub
        return {
            "mode": self.mode,
            "pid": os.getpid(),
            "api_url": api_url,
            "moto_endpoint": self.moto.endpoint_url,
            "moto_log": str(self.moto.log_path),
            "igni_token_url": stub.token_url if stub else self.stack.igni_token_url,
            "igni_workspace": self.real_igni.workspace if self.real_igni else STUB_WORKSPACE,
            "stub_base_url": stub.base_url if stub else None,
            "stub_client_id": STUB_CLIENT_ID if stub else None,
            "profiles": ["default", *self.profiles],
            "stack": self.stack.names(),
            "function_env": self.function_env,
            "function_timeout_s": self.stack.function_timeout_s,
            "auth": None if auth is None else auth.state(),
        }


def load_handler(spec: str | None = None) -> Handler:
    """Import a handler named ``package.module.function`` (Lambda's form) or ``module:function``.

    None: the API function's Handler in template.yaml. Import it only after the function's
    environment is set: modules may read it at import.
    """
    if spec is None:
        template = load_template()
        spec = str(resource_properties(template, api_function(template))["Handler"])
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if str(REPO_ROOT / "src") not in sys.path:  # a plain checkout, without `pip install -e .`
        sys.path.insert(0, str(REPO_ROOT / "src"))
    handler = getattr(importlib.import_module(module_name), attr)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    return handler  # type: ignore[no-any-return]


def make_api(
    handler: Handler,
    stack: LocalStack,
    auth: LocalAuth,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    quiet: bool = False,
) -> ApiServer:
    """The API on ``stack`` as API Gateway serves it: routes, SigV4 and the local IAM policy."""
    return ApiServer(
        handler,
        auth.verifier(region=stack.region, api_id=DEFAULT_API_ID, stage=DEFAULT_STAGE),
        host=host,
        port=port,
        account_id=stack.account_id,  # requestContext.accountId: the API owner's
        quiet=quiet,
        context_factory=lambda: FakeLambdaContext(
            timeout_s=stack.function_timeout_s,
            function_name=stack.function_name,
            memory_limit_in_mb=stack.function_memory_mb,
            region=stack.region,
            account_id=stack.account_id,
        ),
    )


def usage(api_url: str, env: LocalEnvironment, auth: LocalAuth, state_file: Path) -> str:
    """What `make local` prints once it serves: where things are and how to call them."""
    stack, stub, real = env.stack, env.stub, env.real_igni
    if stack is None:
        raise RuntimeError("not started")
    igni = f"Igni stub at {stub.token_url if stub else ''} (client {STUB_CLIENT_ID}; fake tokens)"
    if real is not None:
        url = real.token_url or "https://{workspace}.igni.co/api/v1/oauth2/token"
        igni = f"REAL Igni, workspace {real.workspace}: {url}"
    profiles = "".join(f"\n    profile {p:<12} {api_url}/token/{p}" for p in env.profiles)
    accepted = "\n".join(
        f"  {line}" if line.startswith(" ") else textwrap.fill(line, 98, initial_indent="  ")
        for line in auth.description
    )
    cli = Path(sys.executable).parent / "igni-token"
    keys = ("$AWS_ACCESS_KEY_ID", "$AWS_SECRET_ACCESS_KEY")
    if LOCAL_TEST_ACCESS_KEY_ID in auth.credentials:
        keys = (LOCAL_TEST_ACCESS_KEY_ID, TEST_SECRET)
    return f"""
Igni token vendor, local. Mode: {env.mode.upper()}: {igni}

  API (REST, stage v1)   {api_url}/token   (also {api_url}/v1/token){profiles}
  AWS (moto server)      {stack.endpoint_url}: table {stack.table_name}, secret {stack.secret_name}
  state for other tools  {state_file}

Routes are template.yaml's: any other path or method is 403 Missing Authentication Token.
Signatures are checked as API Gateway's AWS_IAM does (SigV4, service execute-api, region
{stack.region}); a missing, wrong or stale one gets 403 and never reaches the function.
{accepted}

Call it (Ctrl-C stops everything):
  {cli if cli.exists() else "igni-token"} get --endpoint {api_url}   (--json, --profile NAME)
  curl --aws-sigv4 "aws:amz:{stack.region}:execute-api" --user "{keys[0]}:{keys[1]}" \\
    {api_url}/v1/token
  AWS_ACCESS_KEY_ID={keys[0]} AWS_SECRET_ACCESS_KEY={keys[1]} \\
    awscurl --service execute-api --region {stack.region} {api_url}/token
  make invoke EVENT=events/get_token.json     (the handler on one event, against this stack)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.run",
        description="make local",
        epilog="environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the credentials accepted; "
        "else the documented test ones), IGNI_LOCAL_CALLER_ARN, LOCAL_IAM_POLICY or "
        "LOCAL_IAM_POLICY_JSON (which caller may invoke what), LOCAL_PROFILES, and "
        "IGNI_WORKSPACE + IGNI_CLIENT_ID + IGNI_CLIENT_SECRET for the real Igni (docs/local.md)",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=3000, help="API port")
    add("--moto-port", type=int, default=5005)
    add("--stub-port", type=int, default=8089)
    add("--stack-name", default="local")
    add("--state-file", type=Path, default=STATE_FILE)
    add("--handler", default=None, help="default: the API function's Handler")
    add(
        "--user-arn",
        help=f"the caller's ARN (default: $IGNI_LOCAL_CALLER_ARN or {DEFAULT_LOCAL_USER_ARN})",
    )
    add(
        "--profiles",
        default=os.environ.get(PROFILES_VAR, ""),
        metavar="NAME[,NAME]",
        help=f"extra credential profiles, served at /token/NAME (default: ${PROFILES_VAR})",
    )
    # Routing is always API Gateway's now; the flag is accepted so that older commands still run.
    add("--strict-routes", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    try:
        real = RealIgni.from_environ()
        # Before moto's fake credentials reach os.environ: the developer's own are what count.
        environ = dict(os.environ)
        if args.user_arn:
            environ["IGNI_LOCAL_CALLER_ARN"] = args.user_arn
        auth = local_auth(environ)
        env = LocalEnvironment(
            host=args.host,
            moto_port=args.moto_port,
            stub_port=args.stub_port,
            stack_name=args.stack_name,
            region=local_region(environ),
            real_igni=real,
            profiles=parse_profiles(args.profiles),
            quiet=False,
        )
    except (ValueError, PolicyError) as exc:
        print(f"make local: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    api: ApiServer | None = None
    try:
        print(f"make local: starting ({'stub' if real is None else 'real Igni'} mode)...")
        stack = env.start()
        os.environ.update(env.function_env)
        api = make_api(load_handler(args.handler), stack, auth, host=args.host, port=args.port)
        api.start()
        args.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(env.state(api.base_url, auth), indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.state_file)  # in one step: a reader never sees half a file
        print(usage(api.base_url, env, auth, args.state_file), flush=True)
        while not stop.wait(0.5):
            pass
        print("make local: stopping...", flush=True)
    except Exception:
        traceback.print_exc()
        print(f"make local: failed; moto's log is {env.moto.log_path}", file=sys.stderr)
        return 1
    finally:
        if api is not None:
            api.stop()
        env.stop()
        try:  # The state file goes if this process wrote it (another `make local` may own it).
            if json.loads(args.state_file.read_text(encoding="utf-8")).get("pid") == os.getpid():
                args.state_file.unlink()
        except (OSError, ValueError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
