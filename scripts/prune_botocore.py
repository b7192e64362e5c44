"""Keep in an artifact's botocore only the services its function makes clients for.

Usage: python scripts/prune_botocore.py ARTIFACT_DIR SERVICE...   (the Makefile's build targets)

botocore ships the models of about 400 services (28 MB) and, in ``data/endpoints.json``, the
endpoints of all of them in every partition (1.2 MB of JSON that every cold start parses: about
25 ms). A client can only be made for a service whose model is there, so the other services'
models and endpoint entries are dead weight: both go. Partitions, regions and defaults stay as
they are, so the kept services resolve their endpoints exactly as with the whole file
(scripts/check_artifact.py compares them).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def prune(artifact: Path, services: set[str]) -> tuple[int, int]:
    """Remove the other services; returns (model directories, endpoint entries) removed."""
    data = artifact / "botocore" / "data"
    if not data.is_dir():
        raise SystemExit(f"{data}: no botocore data (is botocore packaged?)")
    missing = sorted(s for s in services if not (data / s).is_dir())
    if missing:
        raise SystemExit(f"botocore has no model for {', '.join(missing)}")
    models = 0
    for entry in data.iterdir():
        if entry.is_dir() and entry.name not in services:
            shutil.rmtree(entry)
            models += 1
    path = data / "endpoints.json"
    endpoints = json.loads(path.read_text(encoding="utf-8"))
    entries = 0
    for partition in endpoints["partitions"]:
        kept = {k: v for k, v in partition["services"].items() if k in services}
        entries += len(partition["services"]) - len(kept)
        partition["services"] = kept
    path.write_text(json.dumps(endpoints, separators=(",", ":")), encoding="utf-8")
    return models, entries


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    models, entries = prune(Path(argv[0]), set(argv[1:]))
    print(
        f"botocore: kept {' '.join(sorted(argv[1:]))}; removed {models} models, {entries} "
        "endpoint entries"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
