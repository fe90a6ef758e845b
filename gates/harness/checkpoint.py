"""What a gate checkpoint (FT-027, FT-032, FT-038, FT-047) needs before the board can decide it: a
manifest that names real stories once each, and at least one test marked for every required story
and gate check. Read from the test sources (ast), without importing or running them."""
from __future__ import annotations

import ast
import json
from pathlib import Path

MARKS = ("story", "gate_check")


def marked_ids(root: Path) -> dict[str, set[str]]:
    """{"story": ids, "gate_check": ids} over every pytest.mark.story(...) / gate_check(...) in the tests."""
    found: dict[str, set[str]] = {m: set() for m in MARKS}
    for path in [*root.glob("stories/**/test_*.py"), *root.glob("gates/gate*/test_*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MARKS
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "mark"):
                found[node.func.attr].update(a.value for a in node.args if isinstance(a, ast.Constant))
    return found


def manifest(root: Path, gate: int) -> dict:
    return json.loads((root / "gates" / f"gate{gate}" / "manifest.json").read_text())


def manifest_problems(root: Path, gate: int) -> list[str]:
    """Everything that would stop the board from deciding this gate's checkpoint honestly."""
    m = manifest(root, gate)
    stories = {s["id"]: s for s in json.loads((root / "gates" / "stories.json").read_text())}
    required = m.get("stories", [])
    checks = [c["id"] for c in m.get("checks", [])]
    not_required = {n["id"]: n.get("reason", "") for n in m.get("not_required", [])}
    problems = [f"{s}: not in gates/stories.json" for s in [*required, *not_required] if s not in stories]
    listed = required + checks
    problems += [f"{i}: listed twice" for i in sorted({i for i in listed if listed.count(i) > 1})]
    problems += [f"{s}: a gate-{gate} story of the plan, neither required nor set aside with a reason"
                 for s, story in stories.items() if story.get("gate") == gate and s not in required
                 and s not in not_required]
    problems += [f"{s}: both required and not required" for s in set(required) & set(not_required)]
    problems += [f"{s}: not required without a reason" for s, reason in not_required.items() if not reason]
    marked = marked_ids(root)
    problems += [f"{s}: required, but no test is marked story({s!r})" for s in required if s not in marked["story"]]
    problems += [f"{c}: no test is marked gate_check({c!r})" for c in checks if c not in marked["gate_check"]]
    return problems


def verdict_for(root: Path, gate: int, outcomes: dict[str, str | None]) -> str:
    """The board's verdict for this gate when every required row's one test passed, except the rows
    in `outcomes`: id -> "failed" | "skipped" | None (no test ran at all)."""
    from gates.harness.board import TestResult, build_board

    m = manifest(root, gate)
    results = {}
    for row in [c["id"] for c in m.get("checks", [])] + m.get("stories", []):
        outcome = outcomes.get(row, "passed")
        results[row] = [TestResult(f"test::{row}", outcome, "a reason")] if outcome else []
    return build_board(m, {}, results, results, "cpu-reference").verdict


def check_verdict_rules(root: Path, gate: int) -> None:
    """On a gate's own rows the verdict follows the honesty rules: all ran and passed is PASS, a
    row not run is INCOMPLETE, a failure is FAIL even beside a skip (FT-027/032/038/047)."""
    m = manifest(root, gate)
    check, story = m["checks"][0]["id"], m["stories"][-1]
    assert verdict_for(root, gate, {}) == "PASS"
    assert verdict_for(root, gate, {story: "skipped"}) == "INCOMPLETE"
    assert verdict_for(root, gate, {check: None}) == "INCOMPLETE"
    assert verdict_for(root, gate, {story: "failed"}) == "FAIL"
    assert verdict_for(root, gate, {check: "failed", story: "skipped"}) == "FAIL"
