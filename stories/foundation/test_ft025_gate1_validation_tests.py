"""FT-025 Gate 1 validation tests: `pytest gates/gate1` is the gate-1 suite.

Acceptance: a gate-1 run collects gate 1's own checks (gates/gate1) and the tests of every story gate 1
requires, and leaves out the tests of stories only other gates require.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gates.harness.checkpoint import marked_ids

pytestmark = pytest.mark.story("FT-025")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_gate1_run_collects_its_checks_and_required_stories_only(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest", "gates/gate1", "--collect-only", "-q", "-p",
                             "no:cacheprovider", "--alluredir", str(tmp_path / "results"), "--reports-dir",
                             str(tmp_path / "reports")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert "gates/gate1/test_gate1_checks.py" in files
    assert not any(f.startswith(("gates/gate2", "gates/gate3", "gates/gate4")) for f in files)
    assert "stories/foundation/test_ft001_http_server_setup.py" in files            # FT-001: gate 1
    assert "stories/foundation/test_ft045_documentation_paths.py" not in files     # FT-045: gate 4 only
    required = set(json.loads((ROOT / "gates" / "gate1" / "manifest.json").read_text())["stories"])
    assert required <= marked_ids(ROOT)["story"]
