"""Does this shell have AWS credentials? ``make deploy`` asks before it builds anything.

Prints nothing and exits 0 when botocore's credential chain (the one sam uses: environment,
``AWS_PROFILE`` and the shared files, SSO, a container or instance role) finds credentials;
otherwise prints one line saying what to do and exits 1. Without botocore (no dev venv yet), the
sources that need no call are looked at instead, and any of them counts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

HINT = (
    "make deploy: no AWS credentials found; set AWS_PROFILE (aws configure / aws sso login) or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, then run make deploy again"
)


def _without_botocore(environ: Mapping[str, str]) -> bool:
    """Any credential source that a look, not a call, can find."""
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if environ.get("AWS_PROFILE") or environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return True
    home = Path.home() / ".aws"
    files = [environ.get("AWS_SHARED_CREDENTIALS_FILE"), environ.get("AWS_CONFIG_FILE")]
    paths = [Path(f) for f in files if f] or [home / "credentials", home / "config"]
    return any(path.is_file() and path.stat().st_size > 0 for path in paths)


def found(environ: Mapping[str, str] = os.environ) -> bool:
    try:
        import botocore.session  # noqa: PLC0415 (python3 without botocore: no venv yet)
        from botocore.exceptions import BotoCoreError  # noqa: PLC0415
    except ImportError:
        return _without_botocore(environ)
    try:
        credentials = botocore.session.Session().get_credentials()
    except BotoCoreError:  # e.g. AWS_PROFILE names a profile that does not exist
        return False
    return credentials is not None


def main() -> int:
    if found():
        return 0
    print(HINT)
    return 1


if __name__ == "__main__":
    sys.exit(main())
