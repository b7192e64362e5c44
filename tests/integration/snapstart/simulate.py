"""Simulate SnapStart: init once, then "restore" the snapshot into forked children.

Run as ``python tests/integration/snapstart/simulate.py RESULTS_DIR CHILDREN`` with the
function's environment, ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`` and this directory on
PYTHONPATH (its snapshot_restore_py stands in for the runtime's). The parent imports the handler
(Lambda's init), counting every AWS request made meanwhile, then forks CHILDREN processes. Each
child is one restored environment: same memory as the parent at the snapshot, including the
random state (which os.fork would reseed, so it is put back), then the after-restore hooks, then
one GET /token, all children at the same moment. Each writes what it saw to RESULTS_DIR.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import botocore.endpoint

aws_requests: list[str] = []
_make_request = botocore.endpoint.Endpoint.make_request


def _counting(self: Any, operation_model: Any, request_dict: Any) -> Any:
    aws_requests.append(operation_model.name)
    return _make_request(self, operation_model, request_dict)


botocore.endpoint.Endpoint.make_request = _counting  # type: ignore[method-assign]


def main() -> int:
    results, children = Path(sys.argv[1]), int(sys.argv[2])
    import snapshot_restore_py  # the stand-in, on PYTHONPATH

    from local.events import load_event
    from local.lambda_context import FakeLambdaContext
    from token_vendor.functions import api as handler
    from token_vendor.functions.runtime import current_runtime, get_runtime

    runtime = current_runtime()
    (results / "init.json").write_text(
        json.dumps(
            {
                "built": runtime is not None,
                "owner": runtime.service.lease_owner if runtime else None,
                "aws_requests_during_init": aws_requests,
            }
        )
    )
    snapshot_restore_py.snapshot()
    state = random.getstate()
    event = load_event("get_token")
    go_read, go_write = os.pipe()
    pids = []
    for index in range(children):
        pid = os.fork()
        if pid == 0:  # a restored environment
            os.close(go_write)
            random.setstate(state)
            snapshot_restore_py.restore()
            # Drawn before the request, whose lease waits draw jitter of their own.
            drawn = random.random()
            os.read(go_read, 1)  # returns when the parent closes its end: all start together
            response = handler.lambda_handler(event, FakeLambdaContext())
            body = json.loads(response["body"])
            (results / f"child{index}.json").write_text(
                json.dumps(
                    {
                        "owner": get_runtime().service.lease_owner,
                        "random": drawn,
                        "status": response["statusCode"],
                        "token": body.get("access_token"),
                        "error": body.get("error"),
                    }
                )
            )
            os._exit(0)
        pids.append(pid)
    os.close(go_read)
    os.close(go_write)
    failed = sum(1 for pid in pids if os.waitpid(pid, 0)[1] != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
