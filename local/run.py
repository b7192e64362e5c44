"""``make local``: the whole service on loopback, no Docker, no AWS account.

Starts a moto server (AWS), an Igni stub (unless real Igni credentials are given), creates the
stack's table, key and secret from template.yaml, points the function's environment at them and
serves the function on http://127.0.0.1:3000 the way API Gateway invokes it, until Ctrl-C.

Real Igni instead of the stub: set ``IGNI_WORKSPACE``, ``IGNI_CLIENT_ID`` and
``IGNI_CLIENT_SECRET``; the credentials go into the (local) secret and the function exchanges them
at https://{workspace}.igni.co/api/v1/oauth2/token (or ``IGNI_TOKEN_URL`` when set).

Requests must be signed as API Gateway's ``AWS_IAM`` authorization requires (SigV4, service
``execute-api``) with the credentials of this environment, or the documented test credentials when
it has none; ``LOCAL_IAM_POLICY`` / ``LOCAL_IAM_POLICY_JSON`` say which caller may invoke which
method (see local.auth). ``--profiles analytics`` (or ``LOCAL_PROFILES=analytics``) adds named
credential profiles, each with its own stub client and secret.

``.local-state/env.json`` tells other commands (``make invoke``, the benchmark) where the running
stack is. It holds endpoints, names and the function environment; no secret except the stub's fake
credentials.
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
from types import FrameType
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError

from local.api_server import DEFAULT_API_ID, DEFAULT_STAGE, ApiServer, Handler, LocalIdentity
from local.auth import LocalAuth, PolicyError, local_auth, sigv4_resolver
from local.cfn_template import REPO_ROOT, load_template, resource_properties
from local.igni_stub import IgniStub
from local.lambda_context import FakeLambdaContext
from local.moto_server import MotoServer
from local.sigv4 import (
    DEFAULT_LOCAL_USER_ARN,
    LOCAL_TEST_ACCESS_KEY_ID,
    LOCAL_TEST_SECRET_ACCESS_KEY,
)
from local.stack import DEFAULT_REGION, LocalStack, create_stack

STATE_FILE = REPO_ROOT / ".local-state" / "env.json"
STUB_CLIENT_ID = "local-client"
STUB_CLIENT_SECRET = "local-secret"
STUB_WORKSPACE = "local"
PROFILES_VAR = "LOCAL_PROFILES"
# The function's own rule for profile names (token_vendor.config.PROFILE_NAME); "default" is the
# stack's own secret and "refresh" would be shadowed by the literal /token/refresh resource.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED_PROFILES = frozenset({"default", "refresh"})


def local_region(environ: Mapping[str, str] | None = None) -> str:
    """The region of this environment, found as igni-token finds the one it signs for.

    AWS_REGION, AWS_DEFAULT_REGION, the AWS profile's region, else us-east-1: the local API then
    sits in the region a client in the same shell signs for, as a deployed one would.
    """
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
    for raw in (spec or "").split(","):
        name = raw.strip()
        if not name:
            continue
        if not _PROFILE_NAME.match(name) or name in _RESERVED_PROFILES:
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


# The upstream settings of the shell that make local hands to the function, through the
# template parameters that set them when deployed (issue 13).
UPSTREAM_PARAMETERS = {
    "IGNI_TOKEN_ENDPOINT_AUTH_METHOD": "IgniTokenEndpointAuthMethod",
    "IGNI_AUDIENCE": "IgniAudience",
    "IGNI_DEFAULT_EXPIRES_IN": "IgniDefaultExpiresIn",
}


def upstream_parameters(environ: Mapping[str, str]) -> dict[str, str]:
    """Template parameters for the UPSTREAM_PARAMETERS variables set (non-empty) in ``environ``."""
    return {
        parameter: environ[var].strip()
        for var, parameter in UPSTREAM_PARAMETERS.items()
        if environ.get(var, "").strip()
    }


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
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        if profiles and real_igni is not None:
            raise ValueError(
                "extra profiles need the Igni stub (each gets its own stub client); "
                "unset IGNI_WORKSPACE or drop --profiles / LOCAL_PROFILES"
            )
        self.host = host
        self.moto = MotoServer(host, moto_port)
        self.stub: IgniStub | None = None
        self.profiles = tuple(profiles)
        if real_igni is None:
            clients = dict([(STUB_CLIENT_ID, STUB_CLIENT_SECRET), *map(stub_client, profiles)])
            self.stub = IgniStub(clients, host=host, port=stub_port, quiet=quiet)
        self.real_igni = real_igni
        self.parameters = dict(parameters or {})
        self.stack_name = stack_name or f"local-{uuid.uuid4().hex[:8]}"
        self.region = region
        self.stack: LocalStack | None = None
        # Taken once at start, before anyone copies it into os.environ (which would change what
        # function_env() adds, e.g. the fake credentials).
        self.function_env: dict[str, str] = {}

    @property
    def mode(self) -> str:
        return "stub" if self.stub is not None else "igni"

    def start(self) -> LocalStack:
        try:
            endpoint = self.moto.start()
            if self.stub is not None:
                self.stub.start()
            self.stack = create_stack(
                self.stack_name,
                endpoint_url=endpoint,
                region=self.region,
                parameters=self.parameters,
                **self._stack_arguments(),
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
        secrets_manager = stack.secretsmanager()
        profiles: dict[str, dict[str, str]] = {}
        for name in self.profiles:
            client_id, client_secret = stub_client(name)
            secret = secrets_manager.create_secret(
                Name=f"igni-token-vendor/{stack.name}/{name}",
                SecretString=json.dumps(
                    {
                        "client_id": client_id,
                        "client_secret": client_secret,
                        "workspace": STUB_WORKSPACE,
                    }
                ),
                Tags=[{"Key": "aws:cloudformation:stack-name", "Value": stack.name}],
            )
            profiles[name] = {"secret_id": secret["ARN"], "token_url": self.stub.token_url}
        return json.dumps(profiles)

    def _stack_arguments(self) -> dict[str, Any]:
        if self.stub is not None:
            return {
                "secret_value": {
                    "client_id": STUB_CLIENT_ID,
                    "client_secret": STUB_CLIENT_SECRET,
                    "workspace": STUB_WORKSPACE,
                },
                "igni_token_url": self.stub.token_url,
            }
        real = self.real_igni
        if real is None:  # pragma: no cover - __init__ sets one of the two
            raise RuntimeError("neither the stub nor real Igni")
        return {
            "secret_value": {
                "client_id": real.client_id,
                "client_secret": real.client_secret,
                "workspace": real.workspace,
            },
            "igni_workspace": real.workspace,
            "igni_token_url": real.token_url,
        }

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
        return {
            "mode": self.mode,
            "pid": os.getpid(),
            "api_url": api_url,
            "moto_endpoint": self.moto.endpoint_url,
            "moto_log": str(self.moto.log_path),
            "igni_token_url": self.stub.token_url if self.stub else self.stack.igni_token_url,
            "igni_workspace": self.real_igni.workspace if self.real_igni else STUB_WORKSPACE,
            "stub_base_url": self.stub.base_url if self.stub else None,
            "stub_client_id": STUB_CLIENT_ID if self.stub else None,
            "profiles": ["default", *self.profiles],
            "stack": self.stack.names(),
            "function_env": self.function_env,
            "function_timeout_s": self.stack.function_timeout_s,
            "auth": None if auth is None else auth.state(),
        }


def handler_spec(template_path: Path | None = None) -> str:
    """The function's Handler from template.yaml, e.g. ``token_vendor.handler.lambda_handler``."""
    template = load_template(template_path) if template_path else load_template()
    return str(resource_properties(template, "TokenFunction")["Handler"])


def load_handler(spec: str | None = None) -> Handler:
    """Import a handler named ``package.module.function`` (Lambda's form) or ``module:function``.

    Import it only after the function's environment is set: modules may read it at import.
    """
    spec = spec or handler_spec()
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    src = str(REPO_ROOT / "src")
    if src not in sys.path:
        # Works from a plain checkout too, not only after `pip install -e .`.
        sys.path.insert(0, src)
    module = importlib.import_module(module_name)
    handler = getattr(module, attr)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    return handler  # type: ignore[no-any-return]


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    # Replace in one step so a reader never sees half a file.
    tmp.replace(path)


def make_api(
    handler: Handler,
    stack: LocalStack,
    auth: LocalAuth,
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    strict_routes: bool = False,
    quiet: bool = False,
) -> ApiServer:
    """The API on ``stack`` as API Gateway serves it: SigV4 checked, the local IAM policy applied.

    A request refused by either gets API Gateway's 403 and never reaches ``handler``.
    """
    api_id = DEFAULT_API_ID
    verifier = auth.verifier(region=stack.region, api_id=api_id, stage=DEFAULT_STAGE)
    return ApiServer(
        handler,
        sigv4_resolver(verifier),
        host=host,
        port=port,
        stage=DEFAULT_STAGE,
        api_id=api_id,
        # requestContext.accountId: the API's owner, the stack's account.
        identity=LocalIdentity(account_id=stack.account_id),
        strict_routes=strict_routes,
        quiet=quiet,
        context_factory=lambda: FakeLambdaContext(
            timeout_s=stack.function_timeout_s,
            function_name=stack.function_name,
            memory_limit_in_mb=stack.function_memory_mb,
            region=stack.region,
            account_id=stack.account_id,
        ),
    )


def _igni_token_command() -> str:
    """How to run the CLI from here: the venv's igni-token if installed, relative when short."""
    script = Path(sys.executable).parent / "igni-token"
    if not script.exists():
        return "igni-token"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def usage(api_url: str, env: LocalEnvironment, auth: LocalAuth, state_file: Path) -> str:
    """What `make local` prints once it serves: where things are and how to call them."""
    stack = env.stack
    if stack is None:
        raise RuntimeError("not started")
    if env.stub is not None:
        igni = f"Igni stub at {env.stub.token_url} (client {STUB_CLIENT_ID}; fake token every call)"
    else:
        real = env.real_igni
        url = (
            real.token_url if real else None
        ) or "https://{workspace}.igni.co/api/v1/oauth2/token"
        igni = f"REAL Igni, workspace {real.workspace if real else '?'}: {url}"
    profiles = "".join(
        f"\n    profile {name:<12} {api_url}/token/{name}   (stub client {stub_client(name)[0]})"
        for name in env.profiles
    )
    accepted = "\n".join(
        textwrap.fill(line, width=98, initial_indent="  ", subsequent_indent="      ")
        if not line.startswith(" ")
        else f"  {line}"
        for line in auth.description
    )
    cli = _igni_token_command()
    test_keys = LOCAL_TEST_ACCESS_KEY_ID in auth.credentials
    awscurl_env = (
        f"AWS_ACCESS_KEY_ID={LOCAL_TEST_ACCESS_KEY_ID} "
        f"AWS_SECRET_ACCESS_KEY={LOCAL_TEST_SECRET_ACCESS_KEY} \\\n    "
        if test_keys
        else ""
    )
    return f"""
Igni token vendor, local. Mode: {env.mode.upper()}: {igni}

  API (REST, stage v1)   {api_url}/token   (also {api_url}/v1/token){profiles}
  AWS (moto server)      {stack.endpoint_url}   (state lost when this stops)
    table                {stack.table_name}
    secret               {stack.secret_name}
    KMS key              {stack.kms_key_arn}
  state for other tools  {state_file}

Signatures are checked as API Gateway's AWS_IAM does (SigV4, service execute-api, region
{stack.region}); a missing, wrong or stale one gets 403 and never reaches the function.
{accepted}

Call it:
  {cli} get --endpoint {api_url}          (--header, --json, --profile NAME)
  curl -i {api_url}/token                 (unsigned: 403 Missing Authentication Token)
  {awscurl_env}awscurl --service execute-api --region {stack.region} {api_url}/token
  make invoke EVENT=events/get_token.json     (runs the handler on an event, this stack)

Ctrl-C stops everything.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.run",
        description="make local",
        epilog="environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the credentials accepted; "
        "else the documented test ones), IGNI_LOCAL_CALLER_ARN, LOCAL_IAM_POLICY or "
        "LOCAL_IAM_POLICY_JSON (which caller may invoke what), LOCAL_PROFILES, "
        "IGNI_TOKEN_ENDPOINT_AUTH_METHOD, IGNI_AUDIENCE, IGNI_DEFAULT_EXPIRES_IN, and "
        "IGNI_WORKSPACE + IGNI_CLIENT_ID + IGNI_CLIENT_SECRET for the real Igni (docs/local.md)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000, help="API port")
    parser.add_argument("--moto-port", type=int, default=5005)
    parser.add_argument("--stub-port", type=int, default=8089)
    parser.add_argument("--stack-name", default="local")
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    parser.add_argument("--handler", default=None, help="default: TokenFunction's Handler")
    parser.add_argument(
        "--user-arn",
        default=None,
        help="the caller's ARN for the accepted credentials (default: $IGNI_LOCAL_CALLER_ARN or "
        f"{DEFAULT_LOCAL_USER_ARN})",
    )
    parser.add_argument(
        "--profiles",
        default=os.environ.get(PROFILES_VAR, ""),
        metavar="NAME[,NAME]",
        help="extra credential profiles, each with its own stub client and secret, served at "
        f"/token/NAME (default: ${PROFILES_VAR})",
    )
    parser.add_argument(
        "--strict-routes",
        action="store_true",
        help="answer unrouted paths 403 like API Gateway instead of passing them on",
    )
    args = parser.parse_args(argv)

    try:
        real = RealIgni.from_environ()
        profiles = parse_profiles(args.profiles)
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
            profiles=profiles,
            quiet=False,
            parameters=upstream_parameters(environ),
        )
    except (ValueError, PolicyError) as exc:
        print(f"make local: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    api: ApiServer | None = None
    try:
        print(f"make local: starting ({'stub' if real is None else 'real Igni'} mode)...")
        stack = env.start()
        os.environ.update(env.function_env)
        handler = load_handler(args.handler)
        api = make_api(
            handler,
            stack,
            auth,
            host=args.host,
            port=args.port,
            strict_routes=args.strict_routes,
        )
        api.start()
        write_state(args.state_file, env.state(api.base_url, auth))
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
        _remove_state(args.state_file)
    return 0


def _remove_state(path: Path) -> None:
    """Remove the state file if this process wrote it (another `make local` may own it)."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
