"""The gate board: required checks -> PASS / FAIL / NOT RUN, and each gate's verdict.

Honesty rules (../DESIGN.md): a gate is PASS only if every required check ran and passed; any
failure makes it FAIL; otherwise (something required did not run) it is INCOMPLETE. A check whose
tests were partly skipped did not fully run: it is NOT RUN, with the skip reasons.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
INCOMPLETE = "INCOMPLETE"


@dataclass
class TestResult:
    nodeid: str
    outcome: str                  # "passed" | "failed" | "skipped"
    reason: str = ""              # skip reason or the failure's last line
    models: list[str] = field(default_factory=list)


@dataclass
class CheckRow:
    id: str
    title: str
    kind: str                     # "story" | "check"
    status: str
    reason: str
    tests: list[str]
    device: str
    models: list[str]             # paths of the model files the tests used
    model_files: list[dict] = field(default_factory=list)  # their name, size and sha256

    @property
    def model_names(self) -> list[str]:
        return [f"{m['file']} (sha256 {m['sha256'][:12]})" if "sha256" in m else m["file"] for m in self.model_files]


@dataclass
class GateBoard:
    gate: int
    title: str
    verdict: str
    rows: list[CheckRow]
    criteria: str = ""

    def counts(self) -> dict:
        return {s: sum(r.status == s for r in self.rows) for s in (PASS, FAIL, NOT_RUN)}


def check_status(results: list[TestResult], missing_reason: str) -> tuple[str, str]:
    """Fold the results of one check's tests into (status, reason)."""
    if not results:
        return NOT_RUN, missing_reason
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        return FAIL, f"{len(failed)} of {len(results)} tests failed: " + "; ".join(
            f"{r.nodeid.split('::')[-1]}: {r.reason}" for r in failed[:3])
    skipped = [r for r in results if r.outcome == "skipped"]
    if skipped:
        reasons = sorted({r.reason for r in skipped})
        return NOT_RUN, f"{len(skipped)} of {len(results)} tests not run: " + "; ".join(reasons[:3])
    return PASS, f"{len(results)} tests passed"


def gate_verdict(rows: list[CheckRow]) -> str:
    if any(r.status == FAIL for r in rows):
        return FAIL
    if rows and all(r.status == PASS for r in rows):
        return PASS
    return INCOMPLETE


def no_test_reason(kind: str, id_: str) -> str:
    return "no test implements this check yet" if kind == "check" else "no test for this story yet"


def name_only(path: str) -> dict:
    return {"file": Path(path).name}


def build_board(manifest: dict, story_titles: dict[str, str], by_story: dict[str, list[TestResult]],
                by_check: dict[str, list[TestResult]], device: str,
                missing_reason: Callable[[str, str], str] = no_test_reason,
                describe_model: Callable[[str], dict] = name_only) -> GateBoard:
    """`missing_reason(kind, id)` says why a row has no results (no test, or not selected in this run);
    `describe_model(path)` names a model file (name, sha256) for the row."""
    wanted = [("check", c["id"], c["title"], by_check) for c in manifest.get("checks", [])]
    wanted += [("story", s, story_titles.get(s, ""), by_story) for s in manifest.get("stories", [])]
    rows = []
    for kind, id_, title, results_by_id in wanted:
        results = results_by_id.get(id_, [])
        status, reason = check_status(results, missing_reason(kind, id_))
        models = sorted({m for r in results for m in r.models})
        rows.append(CheckRow(id_, title, kind, status, reason, [r.nodeid for r in results], device, models,
                             [describe_model(m) for m in models]))
    return GateBoard(manifest["gate"], manifest["title"], gate_verdict(rows), rows, manifest.get("criteria", ""))


def overall_verdict(boards: list[GateBoard]) -> str:
    verdicts = [b.verdict for b in boards]
    if FAIL in verdicts:
        return FAIL
    return PASS if verdicts and all(v == PASS for v in verdicts) else INCOMPLETE


# -- rendering -------------------------------------------------------------------------------

def render_text(boards: list[GateBoard], device: str, notes: list[str] = ()) -> str:
    """`notes`: what makes the run less than a full one (fewer examples, shards not run), under the header."""
    lines = [f"GATE BOARD  (device: {device})"] + [f"NOTE: {note}" for note in notes]
    for b in boards:
        c = b.counts()
        lines.append("")
        lines.append(f"Gate {b.gate}: {b.title}  ->  {b.verdict}   "
                     f"({c[PASS]} pass, {c[FAIL]} fail, {c[NOT_RUN]} not run)")
        for r in b.rows:
            model = f"  [model: {', '.join(r.model_names)}]" if r.models else ""
            lines.append(f"  {r.status:<8} {r.id:<14} {r.title[:44]:<44} {r.reason[:110]}{model}")
    lines.append("")
    lines.append(f"OVERALL: {overall_verdict(boards)}")
    return "\n".join(lines)


def render_markdown(boards: list[GateBoard], device: str, notes: list[str] = ()) -> str:
    out = ["# Gate board", "", f"Device: `{device}`  ", *[f"Note: {note}  " for note in notes],
           f"Overall: **{overall_verdict(boards)}**", ""]
    for b in boards:
        c = b.counts()
        out += [f"## Gate {b.gate}: {b.title} — **{b.verdict}**", "",
                f"{c[PASS]} pass, {c[FAIL]} fail, {c[NOT_RUN]} not run", "",
                "| status | id | title | reason | device | model |", "|---|---|---|---|---|---|"]
        for r in b.rows:
            reason = r.reason.replace("|", "\\|")
            models = ", ".join(r.model_names)
            out.append(f"| {r.status} | {r.id} | {r.title} | {reason} | {r.device} | {models} |")
        out.append("")
    return "\n".join(out)


def write_reports(boards: list[GateBoard], device: str, directory: Path, notes: list[str] = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"device": device, "notes": list(notes), "overall": overall_verdict(boards),
            "gates": [{**asdict(b), "counts": b.counts()} for b in boards]}
    (directory / "gate-board.json").write_text(json.dumps(data, indent=1) + "\n")
    (directory / "gate-board.md").write_text(render_markdown(boards, device, notes) + "\n")
