"""FT-047 Gate 4 checkpoint: the gate board decides it, by the honesty rules.

Acceptance:
- gates/gate4/manifest.json names real stories once each, accounts for every gate-4 story of the
  plan (required, or set aside with a reason), and every required story and gate check has a test;
- on gate 4's own rows, the verdict is PASS only when every required row ran and passed; one row
  not run (skipped, or no test ran) makes it INCOMPLETE; one failure makes it FAIL, even beside a skip.
The verdict of a real run is the board's (reports/gate-board.json) and Allure's "Gate 4 verdict" result.
"""
from pathlib import Path

import pytest

from gates.harness.checkpoint import check_verdict_rules, manifest_problems

pytestmark = pytest.mark.story("FT-047")

ROOT = Path(__file__).resolve().parents[2]
GATE = 4


def test_the_manifest_is_complete_and_every_required_row_has_a_test():
    assert manifest_problems(ROOT, GATE) == []


def test_the_verdict_follows_the_honesty_rules():
    check_verdict_rules(ROOT, GATE)
