"""``make local``: the whole service on loopback, no Docker, no AWS account (docs/local.md).

DynamoDB Local, a moto server (KMS, Secrets Manager), the Igni stub (or the real Igni:
``IGNI_WORKSPACE``, ``IGNI_CLIENT_ID``, ``IGNI_CLIENT_SECRET``), the stack made from
template.yaml (``IGNI_TOKEN_ENDPOINT_AUTH_METHOD``, ``IGNI_AUDIENCE``,
``IGNI_DEFAULT_EXPIRES_IN`` pass through its parameters), and the API
function served as API Gateway serves it (:mod:`local.gateway`) until Ctrl-C.
``.local-state/env.json`` tells other commands where the stack is; it holds no secret but the
stub's fake credentials.
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError

from local.cfn_template import REPO_ROOT, api_function, load_template, resource_properties
from local.dynamodb_local import DynamoDBLocal
from local.gateway.auth import LocalAuth, PolicyError, local_auth
from local.gateway.server import DEFAULT_API_ID, DEFAULT_STAGE, ApiServer, Handler
from local.gateway.sigv4 import DEFAULT_LOCAL_USER_ARN, LOCAL_TEST_ACCESS_KEY_ID
from local.gateway.sigv4 import LOCAL_TEST_SECRET_ACCESS_KEY as TEST_SECRET
from local.igni_stub import StubProcess
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer
from local.process import PortInUse, StartError, check_port_free
from local.stack import DEFAULT_REGION, LocalStack, create_stack

STATE_FILE = REPO_ROOT / ".local-state" / "env.json"
STUB_CLIENT_ID, STUB_CLIENT_SECRET, STUB_WORKSPACE = "local-client", "local-secret", "local"
PROFILES_VAR = "LOCAL_PROFILES"
# The function's rule for profile names; "default" is the stack's own secret and "refresh"
# would be shadowed by the literal /token/refresh resource.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def local_region(env: Mapping[str, str] = os.environ) -> str:
    """AWS_REGION, AWS_DEFAULT_REGION, the profile's, else us-east-1: what igni-token signs for."""
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
    names = [name for name in (raw.strip() for raw in (spec or "").split(",")) if name]
    for name in names:
        if not _PROFILE_NAME.match(name) or name in {"default", "refresh"}:
            raise ValueError(
                f"profile {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(not 'default' or 'refresh')"
            )
    return tuple(dict.fromkeys(names))


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
        client_id = environ.get("IGNI_CLIENT_ID", "").strip()
        client_secret = environ.get("IGNI_CLIENT_SECRET", "")
        if workspace and not (client_id and client_secret):
            raise ValueError(
                "IGNI_WORKSPACE is set, so the real Igni is used: set IGNI_CLIENT_ID and "
                "IGNI_CLIENT_SECRET too (or unset IGNI_WORKSPACE to use the local stub)"
            )
        url = environ.get("IGNI_TOKEN_URL") or None
        return cls(workspace, client_id, client_secret, url) if workspace else None

    def secret(self) -> dict[str, str]:
        """The stack secret's value for these credentials."""
        return {k: getattr(self, k) for k in ("client_id", "client_secret", "workspace")}


# The shell's upstream settings make local hands to the function, through the template
# parameters that set them when deployed (issue 13).
UPSTREAM_PARAMETERS = {
    "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "IgniTokenEndpointAuthMethod",
    "IGNI_AUDIENCE": "IgniAudience",
    "IGNI_RESOURCE": "IgniResource",
    "IGNI_DEFAULT_EXPIRES_IN": "IgniDefaultExpiresIn",
}


def upstream_parameters(environ: Mapping[str, str]) -> dict[str, str]:
    """Template parameters for the UPSTREAM_PARAMETERS variables set (non-empty) in ``environ``."""
    pairs = ((name, environ.get(var, "").strip()) for var, name in UPSTREAM_PARAMETERS.items())
    return {name: value for name, value in pairs if value}


@dataclass(kw_only=True)
class LocalEnvironment:
    """DynamoDB Local, a moto server, the Igni stub (or real Igni) and one stack on them; stop()
    undoes it all."""

    host: str = "127.0.0.1"
    moto_port: int = 0
    stub_port: int = 0
    ddb_port: int = 0
    stack_name: str = field(default_factory=lambda: f"local-{uuid.uuid4().hex[:8]}")
    region: str = DEFAULT_REGION
    real_igni: RealIgni | None = None
    profiles: Sequence[str] = ()
    quiet: bool = True
    parameters: Mapping[str, str] = field(default_factory=dict)  # more template parameters

    def __post_init__(self) -> None:
        if self.profiles and self.real_igni is not None:
            raise ValueError(
                "extra profiles need the Igni stub (each gets its own stub client); "
                "unset IGNI_WORKSPACE or drop --profiles / LOCAL_PROFILES"
            )
        self.dynamodb = DynamoDBLocal(self.host, self.ddb_port)
        self.moto = MotoServer(self.host, self.moto_port)
        self.stub: StubProcess | None = None
        self.stack: LocalStack | None = None
        self.function_env: dict[str, str] = {}  # Taken at start, before it reaches os.environ.
        # Every function's (TokenFunction's is function_env), by the template's logical id.
        self.function_envs: dict[str, dict[str, str]] = {}
        self.mode = "stub" if self.real_igni is None else "igni"

    def start(self) -> LocalStack:
        try:
            self.dynamodb.launch()  # The JVM starts while moto and the stub do.
            endpoint = self.moto.start()
            real = self.real_igni or RealIgni(STUB_WORKSPACE, STUB_CLIENT_ID, STUB_CLIENT_SECRET)
            if self.real_igni is None:
                clients = [(STUB_CLIENT_ID, STUB_CLIENT_SECRET), *map(stub_client, self.profiles)]
                self.stub = StubProcess(
                    dict(clients), host=self.host, port=self.stub_port, quiet=self.quiet
                )
            token_url = self.stub.token_url if self.stub else real.token_url
            self.stack = stack = create_stack(
                self.stack_name,
                endpoint_url=endpoint,
                dynamodb_endpoint_url=self.dynamodb.wait(),
                region=self.region,
                parameters=self.parameters,
                secret_value=real.secret(),
                igni_workspace=None if self.stub else real.workspace,
                igni_token_url=token_url,
            )
            self.function_env = stack.function_env()
            profiles = {}
            for name in self.profiles:  # One secret per extra profile, holding its stub client.
                created = stack.secretsmanager().create_secret(
                    Name=f"igni-token-vendor/{stack.name}/{name}",
                    SecretString=json.dumps(RealIgni(STUB_WORKSPACE, *stub_client(name)).secret()),
                )
                profiles[name] = {"secret_id": created["ARN"], "token_url": token_url}
            # Always set, so an IGNI_PROFILES in the shell never reaches the local function.
            self.function_env["IGNI_PROFILES"] = json.dumps(profiles) if profiles else ""
            extra = {"IGNI_PROFILES": self.function_env["IGNI_PROFILES"]}
            self.function_envs = {f: stack.function_env(f) | extra for f in stack.other_envs}
            self.function_envs[api_function(load_template())] = self.function_env
        except BaseException:
            self.stop()
            raise
        return stack

    def stop(self) -> None:
        if self.stub is not None:
            self.stub.stop()
        self.moto.stop()
        self.dynamodb.stop()

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
            "dynamodb_endpoint": self.dynamodb.endpoint_url,
            "igni_token_url": stub.token_url if stub else self.stack.igni_token_url,
            "igni_workspace": self.real_igni.workspace if self.real_igni else STUB_WORKSPACE,
            "stub_base_url": stub.base_url if stub else None,
            "stub_client_id": STUB_CLIENT_ID if stub else None,
            "profiles": ["default", *self.profiles],
            "stack": self.stack.names(),
            "function_env": self.function_env,
            "function_envs": self.function_envs,
            "function_timeout_s": self.stack.function_timeout_s,
            "auth": None if auth is None else auth.state(),
        }


def load_handler(spec: str | None = None) -> Handler:
    """Import ``package.module.function`` (Lambda's form) or ``module:function``; None: the API
    function's Handler in template.yaml. Only once the function's environment is set."""
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


def make_api(handler: Handler, stack: LocalStack, auth: LocalAuth, **options: Any) -> ApiServer:
    """The API on ``stack`` as API Gateway serves it; ``options``: ApiServer's host, port, quiet."""
    return ApiServer(
        handler,
        auth.verifier(region=stack.region, api_id=DEFAULT_API_ID, stage=DEFAULT_STAGE),
        account_id=stack.account_id,  # requestContext.accountId: the API owner's
        **options,
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
        url = real.token_url or f"https://{real.workspace}.igni.co/api/v1/oauth2/token"
        igni = f"REAL Igni, workspace {real.workspace}: {url}"
    profiles = "".join(f"\n    profile {p:<12} {api_url}/token/{p}" for p in env.profiles)
    accepted = "\n".join(
        textwrap.fill(line, 98, initial_indent="  ", subsequent_indent="    ")
        for line in auth.description
    )
    cli = Path(sys.executable).parent / "igni-token"
    key, secret = ("$AWS_ACCESS_KEY_ID", "$AWS_SECRET_ACCESS_KEY")
    if LOCAL_TEST_ACCESS_KEY_ID in auth.credentials:
        key, secret = LOCAL_TEST_ACCESS_KEY_ID, TEST_SECRET
    return f"""
Igni token vendor, local. Mode: {env.mode.upper()}: {igni}
  API (REST, stage v1)   {api_url}/token   (also {api_url}/v1/token){profiles}
  DynamoDB Local         {stack.dynamodb_endpoint_url}: table {stack.table_name}
  AWS (moto server)      {stack.endpoint_url}: KMS, secret {stack.secret_name}
  state for other tools  {state_file}
{accepted}
Call it (Ctrl-C stops everything; docs/local.md has more):
  {cli if cli.exists() else "igni-token"} get --endpoint {api_url}   (--json, --profile NAME)
  curl --aws-sigv4 "aws:amz:{stack.region}:execute-api" --user "{key}:{secret}" \\
    {api_url}/v1/token
  AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} \\
    awscurl --service execute-api --region {stack.region} {api_url}/token
  make invoke EVENT=events/get_token.json     (the handler on one event, against this stack)
"""


# Each port option and the Make variable that sets it (make local PORT=... MOTO_PORT=...).
PORT_VARIABLES = {
    "port": "PORT",
    "moto_port": "MOTO_PORT",
    "stub_port": "STUB_PORT",
    "ddb_port": "DDB_PORT",
}


def busy_port(args: argparse.Namespace) -> str | None:
    """One line naming the first fixed port that is taken and the Make variable that moves it
    (0, a free port, is never taken); None if all are free."""
    for option, variable in PORT_VARIABLES.items():
        port = int(getattr(args, option))
        # DynamoDB Local listens on every interface, the others on --host.
        host = "0.0.0.0" if option == "ddb_port" else args.host
        try:
            check_port_free(host, port)
        except PortInUse:
            return (
                f"port {port} ({variable}) is in use: another `make local` may be running; "
                f"stop it, or choose another port with `make local {variable}=<port>`"
            )
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local.run", description=__doc__)
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=3000, help="API port")
    add("--moto-port", type=int, default=5005)
    add("--stub-port", type=int, default=8089)
    add("--ddb-port", type=int, default=8000, help="DynamoDB Local's port")
    add("--stack-name", default="local")
    add("--state-file", type=Path, default=STATE_FILE)
    add("--handler", default=None, help="default: the API function's Handler")
    caller = os.environ.get("IGNI_LOCAL_CALLER_ARN", "")
    add("--user-arn", default=caller, help=f"$IGNI_LOCAL_CALLER_ARN or {DEFAULT_LOCAL_USER_ARN}")
    add("--profiles", default=os.environ.get(PROFILES_VAR, ""), help=f"NAME,...: ${PROFILES_VAR}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        real = RealIgni.from_environ()
        # Before moto's fake credentials reach os.environ: the developer's own are what count.
        environ = {**os.environ, "IGNI_LOCAL_CALLER_ARN": args.user_arn}
        auth = local_auth(environ)
        env = LocalEnvironment(
            host=args.host,
            moto_port=args.moto_port,
            stub_port=args.stub_port,
            ddb_port=args.ddb_port,
            stack_name=args.stack_name,
            region=local_region(environ),
            real_igni=real,
            profiles=parse_profiles(args.profiles),
            quiet=False,
            parameters=upstream_parameters(environ),
        )
    except (ValueError, PolicyError) as exc:
        print(f"make local: {exc}", file=sys.stderr)
        return 2

    busy = busy_port(args)
    if busy is not None:
        print(f"make local: {busy}", file=sys.stderr)
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
    except StartError as exc:  # one line says why (a server's log, a missing install)
        print(f"make local: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print("make local: failed", file=sys.stderr)
        return 1
    finally:
        if api is not None:
            api.stop()
        env.stop()
        # The state file goes if this process wrote it (another `make local` may own it).
        with contextlib.suppress(OSError, ValueError):
            if json.loads(args.state_file.read_text(encoding="utf-8")).get("pid") == os.getpid():
                args.state_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
