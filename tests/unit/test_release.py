"""One version for the service, the client and the API document; a changelog and a licence."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import igni_token_client
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def _project_version(path: Path) -> str:
    return str(tomllib.loads(path.read_text(encoding="utf-8"))["project"]["version"])


def test_the_service_the_client_and_the_api_document_share_one_version() -> None:
    # Given each place a version is written
    versions = {
        "pyproject.toml": _project_version(REPO_ROOT / "pyproject.toml"),
        "client/pyproject.toml": _project_version(REPO_ROOT / "client" / "pyproject.toml"),
        "igni_token_client.__version__": igni_token_client.__version__,
        "openapi.yaml info.version": str(
            yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text(encoding="utf-8"))["info"][
                "version"
            ]
        ),
    }
    # Then they are one, and a semantic version
    assert len(set(versions.values())) == 1, versions
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions["pyproject.toml"])


def test_the_changelog_has_an_entry_for_the_version() -> None:
    version = _project_version(REPO_ROOT / "pyproject.toml")
    text = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M)


def test_the_licence_is_apache_2() -> None:
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
