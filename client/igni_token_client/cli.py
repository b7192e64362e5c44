"""``igni-token``: get an Igni token from the token vendor in a shell.

igni-token get                      # prints the token
igni-token get --header             # Authorization: Bearer ...
igni-token refresh --rejected -     # reads the refused token from stdin
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Final, NoReturn, TextIO

import botocore.session
from botocore.exceptions import BotoCoreError

from igni_token_client._core import MAX_TIMEOUT
from igni_token_client._redact import redact
from igni_token_client.client import (
    DEFAULT_ENDPOINT,
    Token,
    TokenClient,
    TokenVendorError,
    __version__,
)

__all__ = ["EXIT_CODES", "main"]

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_USAGE: Final = 2

# One exit code per error: the contract's codes, then the client's own.
EXIT_CODES: Final[dict[str, int]] = {
    "no_credentials": 3,
    "endpoint_unreachable": 4,
    "bad_response": 5,
    "invalid_request": 10,
    "access_denied": 11,
    "gateway_forbidden": 12,
    "not_found": 13,
    "unknown_profile": 14,
    "method_not_allowed": 15,
    "refresh_rate_limited": 16,
    "gateway_throttled": 17,
    "configuration_error": 18,
    "upstream_auth_failed": 19,
    "upstream_bad_response": 20,
    "upstream_unavailable": 21,
    "gateway_error": 22,
}
EXIT_OTHER_VENDOR_ERROR: Final = 23  # an error code this CLI does not know yet

_MEANING: Final[dict[str, str]] = {
    "no_credentials": "no AWS credentials found to sign the request",
    "endpoint_unreachable": "the endpoint could not be reached (connection failed or timed out)",
    "bad_response": "the vendor answered 200 without a usable token",
    "invalid_request": "400: bad min_ttl or refresh body",
    "access_denied": "403: the function saw no IAM caller identity",
    "gateway_forbidden": "403 from API Gateway: unsigned, bad or stale signature, or IAM denied",
    "not_found": "404: unknown path",
    "unknown_profile": "404: no such credential profile",
    "method_not_allowed": "405: method not allowed on that path",
    "refresh_rate_limited": "429: a forced refresh happened too recently (see Retry-After)",
    "gateway_throttled": "429 from API Gateway: throttled",
    "configuration_error": "500: the vendor's secret or settings are wrong",
    "upstream_auth_failed": "502: Igni refused the vendor's client credentials",
    "upstream_bad_response": "502: Igni answered without a usable token",
    "upstream_unavailable": "503: Igni unreachable or failing (see Retry-After)",
    "gateway_error": "any other HTTP answer without a contract error code",
}


def _epilog() -> str:
    lines = [
        "environment:",
        f"  IGNI_TOKEN_ENDPOINT  the API's base URL (default {DEFAULT_ENDPOINT}, `make local`)",
        "  IGNI_TOKEN_PROFILE   the credential profile (default: the default profile)",
        "  AWS_REGION, AWS_DEFAULT_REGION   the signing region (else taken from an",
        "                       execute-api host name, else us-east-1)",
        "  AWS credentials come from botocore's chain (AWS_PROFILE, environment, SSO, ...).",
        "  HTTPS_PROXY, HTTP_PROXY, NO_PROXY, AWS_CA_BUNDLE   as botocore reads them",
        "  The endpoint must be https, except for a loopback host (make local).",
        "",
        "exit codes:",
        f"  {EXIT_OK:>2}  success",
        f"  {EXIT_UNEXPECTED:>2}  unexpected failure",
        f"  {EXIT_USAGE:>2}  usage error",
    ]
    lines += [f"  {code:>2}  {name}: {_MEANING[name]}" for name, code in EXIT_CODES.items()]
    lines.append(f"  {EXIT_OTHER_VENDOR_ERROR:>2}  another error code from the vendor")
    return "\n".join(lines)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}: {text!r}"
        )
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``igni-token: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"igni-token: error: {redact(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=os.environ.get("IGNI_TOKEN_ENDPOINT") or DEFAULT_ENDPOINT,
        help="base URL of the API, stage included for a deployed one "
        "(https://ID.execute-api.REGION.amazonaws.com/v1); default: $IGNI_TOKEN_ENDPOINT or "
        f"{DEFAULT_ENDPOINT}",
    )
    common.add_argument(
        "--region",
        default=None,
        help="signing region (default: from the endpoint, $AWS_REGION, $AWS_DEFAULT_REGION, "
        "us-east-1)",
    )
    common.add_argument(
        "--profile",
        default=os.environ.get("IGNI_TOKEN_PROFILE") or None,
        help="the vendor's credential profile: GET /token/PROFILE (default: /token)",
    )
    common.add_argument("--aws-profile", default=None, help="AWS profile to sign with")
    common.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=30.0,
        help=f"read timeout in seconds, above 0 and at most {MAX_TIMEOUT:.0f} (default 30)",
    )
    output = common.add_mutually_exclusive_group()
    output.add_argument("--header", action="store_true", help="print 'Authorization: Bearer TOKEN'")
    output.add_argument("--json", action="store_true", help="print the whole answer as JSON")

    parser = _Parser(
        prog="igni-token",
        description="Get an Igni access token from the token vendor, signed with your AWS "
        "credentials.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    get = commands.add_parser(
        "get",
        parents=[common],
        help="print a token",
        description="Print a token (GET /token).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument(
        "--min-ttl",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="the token must stay valid for at least N seconds",
    )
    refresh = commands.add_parser(
        "refresh",
        parents=[common],
        help="report a token Igni refused and print its replacement",
        description="Report a token Igni refused and print its replacement (POST /token/refresh).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    refresh.add_argument(
        "--rejected",
        required=True,
        metavar="TOKEN",
        help="the refused token; '-' reads it from stdin (keeps it out of the process list)",
    )
    return parser


def _print_token(token: Token, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(token.as_dict()) + "\n")
    elif args.header:
        out.write(f"Authorization: {token.authorization}\n")
    else:
        out.write(token.access_token + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure is one line on stderr and its documented exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (igni-token get | head -c0): nothing left to say to anyone.
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # a bug: still one line, and no credentials in it
        _say(f"unexpected failure: {type(exc).__name__}: {exc}")
        return EXIT_UNEXPECTED


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"igni-token: {redact(text, limit=1000)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        session = botocore.session.Session(profile=args.aws_profile) if args.aws_profile else None
        client = TokenClient(
            args.endpoint,
            region=args.region,
            profile=args.profile or "",
            session=session,
            timeout=args.timeout,
        )
    except (ValueError, BotoCoreError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    try:
        with client:
            if args.command == "get":
                token = client.get_token(args.min_ttl)
            else:
                rejected = sys.stdin.readline().strip() if args.rejected == "-" else args.rejected
                if not rejected:
                    _say("--rejected needs a token")
                    return EXIT_USAGE
                token = client.invalidate(rejected)
    except TokenVendorError as exc:
        _say(_describe(exc, client))
        return EXIT_CODES.get(exc.error, EXIT_OTHER_VENDOR_ERROR)
    except BotoCoreError as exc:  # e.g. an AWS profile that does not exist, an expired SSO login
        _say(f"AWS credentials: {exc}")
        return EXIT_CODES["no_credentials"]
    if client.using_local_test_credentials:
        _say("no AWS credentials found; signed with make local's documented test credentials")
    _print_token(token, args, sys.stdout)
    sys.stdout.flush()
    return EXIT_OK


def _describe(exc: TokenVendorError, client: TokenClient) -> str:
    where = f"{client.endpoint} (region {client.region})"
    status = f"HTTP {exc.status} " if exc.status else ""
    text = f"{status}{exc.error}: {exc.message}".rstrip(": ")
    # API Gateway's signature-mismatch message goes on with the canonical request: keep line one.
    text = text.split("\n", 1)[0]
    hint = ""
    if exc.error == "gateway_forbidden":
        hint = (
            " (check that your AWS credentials are the ones the API accepts, that your clock is "
            "right, that --region matches the API, and that your IAM policy allows "
            "execute-api:Invoke on this method)"
        )
    elif exc.error == "no_credentials":
        hint = " (configure AWS credentials, e.g. aws configure or AWS_PROFILE)"
    elif exc.retry_after is not None:
        hint = f" (retry after {exc.retry_after} s)"
    return f"{where}: {text}{hint}"


if __name__ == "__main__":
    sys.exit(main())
