"""The Lambda runtime's context object, with a real countdown: the handler budgets its upstream
retries with ``get_remaining_time_in_millis()``, so a constant would not do."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext

DEFAULT_TIMEOUT_S = 25.0  # TokenFunction's Timeout in template.yaml.
DEFAULT_FUNCTION_NAME = "igni-token-vendor-local-TokenFunction"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"


class FakeLambdaContext(LambdaContext):
    """Powertools' LambdaContext type (so mypy takes it where a handler wants one), filled in."""

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        function_name: str = DEFAULT_FUNCTION_NAME,
        function_version: str = "$LATEST",
        memory_limit_in_mb: int = 512,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        aws_request_id: str | None = None,
    ) -> None:
        # The base class exposes these as read-only properties over the underscored names.
        self._function_name = function_name
        self._function_version = function_version
        self._invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:"
        self._invoked_function_arn += function_name
        self._memory_limit_in_mb = memory_limit_in_mb
        self._aws_request_id = aws_request_id or str(uuid.uuid4())
        self._log_group_name = f"/aws/lambda/{function_name}"
        # Same shape as Lambda's: date/[version]32-hex-digit instance id.
        self._log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[{function_version}]"
        self._log_stream_name += uuid.uuid4().hex
        # None, as for every invocation that does not come from a mobile SDK.
        self._identity = self._client_context = cast(Any, None)
        self._tenant_id = None
        self.timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        """Milliseconds left before the (pretend) timeout; never negative, like the runtime."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))
