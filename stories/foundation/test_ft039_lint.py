"""FT-039 CI/CD pipeline: the linter runs in CI, through the README's test command.

Acceptance: `ruff check` over the whole repository, with the project's settings in pyproject.toml
(line length 120; pycodestyle, pyflakes and import order), finds nothing; and the settings are there,
so an editor's ruff and CI's agree.
"""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.story("FT-039")

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing_in_the_repository():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"


def test_the_lint_settings_live_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ruff = config["tool"]["ruff"]
    assert ruff["line-length"] == 120
    assert {"E", "F", "W", "I"} <= set(ruff["lint"]["select"])
    assert any(dep.startswith("ruff") for dep in config["project"]["optional-dependencies"]["test"])
