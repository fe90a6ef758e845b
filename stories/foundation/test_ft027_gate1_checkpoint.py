"""FT-027 Gate 1 checkpoint: the gate board decides it, by the honesty rules.

Acceptance:
- gates/gate1/manifest.json names real stories once each, accounts for every gate-1 story of the
  plan (required, or set aside with a reason), and every required story and gate check has a test;
- on gate 1's own rows, the verdict is PASS only when every required row ran and passed; one row
  not run (skipped, or no test ran) makes it INCOMPLETE; one failure makes it FAIL, even beside a skip.
The verdict of a real run is the board's (reports/gate-board.json) and Allure's "Gate 1 verdict" result.
"""
from pathlib import Path

import pytest

from gates.harness.checkpoint import check_verdict_rules, manifest_problems

pytestmark = pytest.mark.story("FT-027")

ROOT = Path(__file__).resolve().parents[2]
GATE = 1


def test_the_manifest_is_complete_and_every_required_row_has_a_test():
    assert manifest_problems(ROOT, GATE) == []


def test_the_verdict_follows_the_honesty_rules():
    check_verdict_rules(ROOT, GATE)
