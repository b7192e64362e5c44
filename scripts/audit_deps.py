"""Audit pinned requirements for known vulnerabilities: pip-audit, with a fallback it lacks.

Usage: python scripts/audit_deps.py [--strict] REQUIREMENTS_FILE...

Each file must pin every package (``name==version``); it is audited as written, nothing is
installed (``pip-audit --no-deps --disable-pip``). pip-audit asks PyPI's per-release JSON API
(``/pypi/NAME/VERSION/json``). Where that answers nothing (a mirror or proxy that serves only the
per-project API, as on this project's machines), pip-audit skips the package and still exits 0.
For a skipped package this script falls back to the per-project API (``/pypi/NAME/json``), whose
``vulnerabilities`` list is PyPI's advisories for the latest release: it applies when the pin *is*
the latest release. A pin that neither answers is reported as not audited; ``--strict`` makes that
a failure.

Exit status: 1 if any pinned version has a known vulnerability (or, with --strict, if any could
not be audited), else 0.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
TIMEOUT_S = 15


@dataclass
class Report:
    vulnerable: list[str] = field(default_factory=list)
    audited: list[str] = field(default_factory=list)
    not_audited: list[str] = field(default_factory=list)


def pins(path: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line (comments, options and markers ignored)."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.split("#", 1)[0].split(";", 1)[0].strip()
            if not line or line.startswith("-") or "==" not in line:
                continue
            name, version = (part.strip() for part in line.split("==", 1))
            found[canonical(name.split("[", 1)[0])] = version
    return found


def canonical(name: str) -> str:
    """PEP 503 normalized name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_audit(path: str) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        path,
        "--no-deps",
        "--disable-pip",
        "--format",
        "json",
        "--progress-spinner",
        "off",
    ]
    # A fixed argument list, no shell: the only input is a file name given by the caller.
    answer = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if answer.returncode not in (0, 1) or not answer.stdout.strip():
        sys.stderr.write(answer.stderr)
        raise SystemExit(f"pip-audit failed on {path} (exit {answer.returncode})")
    return list(json.loads(answer.stdout)["dependencies"])


def latest_release_advisories(name: str, version: str) -> list[str] | None:
    """Advisory ids for ``name==version`` if it is the latest release; None if unknown."""
    url = PYPI_PROJECT_JSON.format(name=name)
    try:
        # https only, a fixed host: the URL is built from a constant and a package name.
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            data = json.load(response)
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    if str(data.get("info", {}).get("version")) != version:
        return None
    return [str(v.get("id")) for v in data.get("vulnerabilities") or []]


def audit(path: str, report: Report) -> None:
    pinned = pins(path)
    skipped: list[tuple[str, str]] = []
    for dep in pip_audit(path):
        name = canonical(str(dep["name"]))
        version = str(dep.get("version") or pinned.get(name, "?"))
        if "skip_reason" in dep:
            skipped.append((name, version))
            continue
        ids = [str(v.get("id")) for v in dep.get("vulns") or []]
        label = f"{name}=={version} ({path})"
        if ids:
            report.vulnerable.append(f"{label}: {', '.join(ids)}")
        else:
            report.audited.append(label)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda nv: latest_release_advisories(*nv), skipped))
    for (name, version), advisories in zip(skipped, answers, strict=True):
        label = f"{name}=={version} ({path})"
        if advisories is None:
            report.not_audited.append(label)
        elif advisories:
            report.vulnerable.append(f"{label}: {', '.join(advisories)}")
        else:
            report.audited.append(label)


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    files = [a for a in argv if a != "--strict"]
    if not files:
        print(__doc__)
        return 2
    report = Report()
    for path in files:
        audit(path, report)
    print(f"audited: {len(report.audited)} pinned packages with no known vulnerability")
    for line in report.vulnerable:
        print(f"VULNERABLE: {line}")
    if report.not_audited:
        print(
            f"NOT AUDITED ({len(report.not_audited)}): PyPI gave no advisory data for these pins "
            "(the per-release API did not answer and the pin is not the latest release):"
        )
        for line in report.not_audited:
            print(f"  {line}")
    if report.vulnerable or (strict and report.not_audited):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
