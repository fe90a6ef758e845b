"""What the plugin adds to allure-results beside the tests' own results, so the HTML report answers
"which gates pass?": one result per gate verdict, categories, the executor (commit) and environment.

File formats: Allure 2's results model (allure-python-commons `model2.py`: TestResult, Attachment)
and its report extras (docs: "Categories", "Environment", executor.json).
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from gates.harness.board import FAIL, INCOMPLETE, NOT_RUN, PASS, GateBoard

# Gate verdict -> Allure status. INCOMPLETE is "broken" (yellow), never "skipped" (grey): a required
# check that did not run must stand out, and the result's message says INCOMPLETE in words.
VERDICT_STATUS = {PASS: "passed", FAIL: "failed", INCOMPLETE: "broken"}
ROW_COLOURS = {PASS: "#97cc64", FAIL: "#fd5a3e", NOT_RUN: "#aaaaaa"}

# Allure matches each failed/broken/skipped result against these, in order (messageRegex is a full match).
CATEGORIES = [
    {"name": "Gate FAIL", "matchedStatuses": ["failed"], "messageRegex": r"(?s)Gate \d+ FAIL.*"},
    {"name": "Gate INCOMPLETE (a required check did not run)", "matchedStatuses": ["broken"],
     "messageRegex": r"(?s)Gate \d+ INCOMPLETE.*"},
    {"name": "Known failure (XFAIL: a FAIL on the gate board)", "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s)XFAIL.*"},
    {"name": "Not run: no GPU", "matchedStatuses": ["skipped"], "messageRegex": r"(?s).*needs a CUDA GPU.*"},
    {"name": "Not run: real model missing", "matchedStatuses": ["skipped"],
     "messageRegex": r"(?s).*(real model .* not available|no model: pass --model).*"},
    {"name": "Unsupported model", "matchedStatuses": ["failed", "broken", "skipped"],
     "messageRegex": r"(?s).*(UNSUPPORTED_MODEL|UnsupportedModelError|unsupported model).*"},
    {"name": "Not run: other reasons", "matchedStatuses": ["skipped"]},
    {"name": "Product defects (assertion failed)", "matchedStatuses": ["failed"]},
    {"name": "Test defects (error in a test or fixture)", "matchedStatuses": ["broken"]},
]


@dataclass(frozen=True)
class Evidence:
    """A file attached to a gate's verdict result."""

    name: str
    path: Path
    mime: str


def _attach(alluredir: Path, evidence: Evidence) -> dict:
    source = f"{uuid.uuid4()}-attachment{evidence.path.suffix}"
    shutil.copyfile(evidence.path, alluredir / source)
    return {"name": evidence.name, "source": source, "type": evidence.mime}


def verdict_message(board: GateBoard) -> str:
    """One plain sentence: the verdict, and why."""
    c, total = board.counts(), len(board.rows)
    head = f"Gate {board.gate} {board.verdict}"
    if board.verdict == PASS:
        return f"{head}: all {total} required checks ran and passed."
    failed = [r.id for r in board.rows if r.status == FAIL]
    not_run = [r.id for r in board.rows if r.status == NOT_RUN]
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {total} required checks FAILED ({', '.join(failed)})")
    if not_run:
        parts.append(f"{len(not_run)} of {total} did NOT RUN ({', '.join(not_run)})")
    tail = "" if failed else " A gate with a required check that did not run is not a pass."
    return f"{head}: " + "; ".join(parts) + f". {c[PASS]} passed." + tail


def verdict_html(board: GateBoard) -> str:
    """Every required check with its state and reason, as the result's description."""
    rows = "".join(
        f'<tr><td style="background:{ROW_COLOURS[r.status]};white-space:nowrap"><b>{r.status}</b></td>'
        f"<td>{html.escape(r.id)}</td><td>{html.escape(r.title)}</td><td>{html.escape(r.reason)}</td>"
        f"<td>{html.escape(', '.join(r.model_names))}</td></tr>"
        for r in board.rows)
    return (f"<p><b>{html.escape(verdict_message(board))}</b></p>"
            f"<p>{html.escape(board.criteria)}</p>"
            "<table><tr><th>state</th><th>id</th><th>required check</th><th>reason</th><th>model</th></tr>"
            f"{rows}</table>")


def write_gate_verdicts(alluredir: Path, boards: list[GateBoard], evidence: dict[int, list[Evidence]],
                        start_ms: int, stop_ms: int) -> None:
    for board in boards:
        history_id = hashlib.md5(f"m0-gate-verdict-{board.gate}".encode()).hexdigest()
        result = {
            "uuid": str(uuid.uuid4()), "historyId": history_id, "testCaseId": history_id,
            "fullName": f"gates.gate{board.gate}#verdict",
            "name": f"Gate {board.gate} verdict: {board.verdict} ({board.title})",
            "status": VERDICT_STATUS[board.verdict],
            "statusDetails": {"message": verdict_message(board)},
            "descriptionHtml": verdict_html(board),
            "start": start_ms, "stop": stop_ms, "stage": "finished",
            "labels": [{"name": "epic", "value": f"Gate {board.gate}"},
                       {"name": "feature", "value": "Gate verdict"},
                       {"name": "story", "value": f"Gate {board.gate}: {board.title}"},
                       {"name": "parentSuite", "value": "Gate verdicts"},
                       {"name": "suite", "value": f"Gate {board.gate}"},
                       {"name": "severity", "value": "blocker"},
                       {"name": "tag", "value": board.verdict}],
            "parameters": [],
            "attachments": [_attach(alluredir, e) for e in evidence.get(board.gate, []) if e.path.is_file()],
        }
        (alluredir / f"{result['uuid']}-result.json").write_text(json.dumps(result, indent=1))


def git_commit(root: Path) -> str:
    """The checked-out commit (with '+changes' when the tree differs from it), or 'unknown'. M0_COMMIT, where
    set, names it instead: a tree copied to another machine without its history (a device call) cannot say."""
    stated = os.environ.get("M0_COMMIT", "").strip()
    if stated:
        return f"{stated} (M0_COMMIT)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _counts_line(board: GateBoard) -> str:
    c = board.counts()
    return f"{board.verdict}  ({c[PASS]} pass, {c[FAIL]} fail, {c[NOT_RUN]} not run)"


def report_name(boards: list[GateBoard]) -> str:
    return "M0 gates: " + ", ".join(f"Gate {b.gate} {b.verdict}" for b in boards)


def write_report_extras(alluredir: Path, boards: list[GateBoard], environment: dict, commit: str) -> None:
    """categories.json, executor.json and environment.properties (with each gate's verdict)."""
    (alluredir / "categories.json").write_text(json.dumps(CATEGORIES, indent=1))
    executor = {"name": "python -m worker gates", "type": "local", "buildName": f"commit {commit}",
                "reportName": report_name(boards) if boards else "M0 tests"}
    (alluredir / "executor.json").write_text(json.dumps(executor, indent=1))
    props = {f"gate{b.gate}": _counts_line(b) for b in boards}      # a properties key ends at a space
    props.update(commit=commit, **environment)
    (alluredir / "environment.properties").write_text("".join(
        f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in props.items()))
