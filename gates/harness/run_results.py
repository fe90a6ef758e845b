"""The raw results a gate run builds its board from (reports/gate-results[-shard-I-of-N].json), the board
built from them, and the merge of several shards' results into the results of one run.

A run writes every test's result (outcome, reason, models, stories, checks) and what the whole collection
was (each test with its shard). The board is always built from this record, so the board of merged shards
is the board one unsharded run with the same outcomes gives. A collected test without a result did not
run: NOT RUN, because its shard was not run or because the run ended before it (../DESIGN.md: a gate is
PASS only when every required check ran and passed).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from gates.harness.board import FAIL, GateBoard, TestResult, build_board
from gates.harness.shards import Shard

FORMAT = "m0-gate-results/1"
INTERRUPTED, TESTS_FAILED = int(pytest.ExitCode.INTERRUPTED), int(pytest.ExitCode.TESTS_FAILED)


@dataclass
class CollectedTest:
    nodeid: str
    stories: list[str]
    checks: list[str]
    shard: int = 1


@dataclass
class LabelledResult(TestResult):
    stories: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


@dataclass
class RunResults:
    gates: list[int]                        # gates named on the command line ([]: not a gate run)
    keyword: str                            # -k and -m of the run: a row they left out says so
    markexpr: str
    device: str                             # the board's device label
    shard_count: int
    shards: list[int]                       # the shards (of shard_count) these results hold
    collection: list[CollectedTest] | None  # the whole collection, every shard's tests; None: not known
    results: list[LabelledResult]
    deselected: list[str] = field(default_factory=list)   # stories and checks whose tests -k/-m left out
    repro_runs: dict = field(default_factory=dict)
    model_files: dict[str, dict] = field(default_factory=dict)   # path -> name, size, sha256 where it ran
    example_scale: float = 1.0              # M0_EXAMPLE_SCALE: the hypothesis examples multiplier
    exitstatus: int = 0
    gpu: str | None = None
    commit: str = ""

    @property
    def selection(self) -> tuple:
        return self.gates, self.keyword, self.markexpr

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "RunResults":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a gate results file of format {FORMAT}")
        fields = {k: v for k, v in data.items() if k not in ("format", "results", "collection")}
        collection = data["collection"]
        return cls(**fields, results=[LabelledResult(**r) for r in data["results"]],
                   collection=None if collection is None else [CollectedTest(**t) for t in collection])


def results_file_name(shard: Shard | None) -> str:
    return f"gate-results-{shard.tag}.json" if shard else "gate-results.json"


def write_results(run: RunResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_json(), indent=1) + "\n")


def load_results(path: Path) -> RunResults:
    try:
        return RunResults.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable gate results file ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# -- the board -------------------------------------------------------------------------------

def missing_reason(run: RunResults, kind: str, id_: str) -> str:
    """Why a board row has no result: its tests were left out of this run, or it has none."""
    if id_ in run.deselected:
        return "not selected in this run (deselected by -k, -m or a node id)"
    if not run.gates:
        return "not in this run (only part of the suite ran; run the gate folder for its board)"
    if run.keyword or run.markexpr:
        # Under pytest-xdist the workers deselect, and the controller never sees which stories they left out.
        return "no test of it ran under this -k/-m selection (left out, or no test for it yet)"
    return "no test implements this check yet" if kind == "check" else "no test for this story yet"


def results_with_not_run(run: RunResults) -> list[LabelledResult]:
    """Every result, in collection order, plus a NOT RUN result for each collected test that has none."""
    have = {r.nodeid: r for r in run.results}
    out = []
    for test in run.collection or []:
        result = have.pop(test.nodeid, None)
        if result is None:
            reason = (f"shard {test.shard}/{run.shard_count} not run" if test.shard not in run.shards
                      else "the run ended before it (interrupted, stopped or its worker lost)")
            result = LabelledResult(test.nodeid, "skipped", reason, [], test.stories, test.checks)
        out.append(result)
    return out + sorted(have.values(), key=lambda r: r.nodeid)


def board_notes(run: RunResults) -> list[str]:
    """What makes this board less than one full run: said on the board itself."""
    notes = []
    if run.example_scale != 1:
        notes.append(f"hypothesis examples x{run.example_scale:g} (M0_EXAMPLE_SCALE): not a full run")
    commits = [c for c in run.commit.split(", ") if c]
    if len(commits) > 1:
        notes.append(f"the shards ran at different commits: {', '.join(commits)}")
    missing = [s for s in range(1, run.shard_count + 1) if s not in run.shards]
    if missing:
        notes.append(f"shards not run: {', '.join(f'{s}/{run.shard_count}' for s in missing)}; their tests are NOT RUN")
    return notes


def boards_from_results(run: RunResults, manifests: dict[int, dict], story_titles: dict[str, str]) -> list[GateBoard]:
    gates = run.gates or sorted(manifests)
    by_story: dict[str, list[TestResult]] = {}
    by_check: dict[str, list[TestResult]] = {}
    for result in results_with_not_run(run):
        plain = TestResult(result.nodeid, result.outcome, result.reason, list(result.models))
        for story_id in result.stories:
            by_story.setdefault(story_id, []).append(plain)
        for check in result.checks:
            by_check.setdefault(check, []).append(plain)

    def describe(path: str) -> dict:
        return run.model_files.get(path) or {"file": Path(path).name}

    return [build_board(manifests[g], story_titles, by_story, by_check, run.device,
                        missing_reason=lambda kind, id_: missing_reason(run, kind, id_), describe_model=describe)
            for g in gates if g in manifests]


def load_gate_definitions(gates_dir: Path) -> tuple[dict[int, dict], dict[str, str]]:
    """The gate manifests (gate number -> manifest) and the story titles (id -> title) of gates_dir."""
    manifests = {}
    for path in sorted(Path(gates_dir).glob("gate*/manifest.json")):
        manifest = json.loads(path.read_text())
        manifests[manifest["gate"]] = manifest
    index_path = Path(gates_dir) / "stories.json"
    stories = json.loads(index_path.read_text()) if index_path.exists() else []
    return manifests, {s["id"]: s["title"] for s in stories}


def board_exit_status(run: RunResults, boards: list[GateBoard]) -> int:
    """As pytest would end the run: interrupted, else a failed test or gate, else 0."""
    if run.exitstatus == INTERRUPTED:
        return INTERRUPTED
    failed = any(r.outcome == "failed" for r in run.results) or any(b.verdict == FAIL for b in boards)
    return TESTS_FAILED if failed or run.exitstatus == TESTS_FAILED else 0


# -- merging shards --------------------------------------------------------------------------

def merge_results(runs: list[tuple[str, RunResults]]) -> RunResults:
    """The results of one run from shards' results (name, results): a ValueError says why they do not belong
    to one run (another gate selection or collection, another device, a shard twice)."""
    if not runs:
        raise ValueError("no results files to merge")
    first_name, first = runs[0]
    if first.collection is None:
        raise ValueError(f"{first_name}: the results do not say what the run collected; it cannot be merged")
    seen: dict[int, str] = {}
    for name, run in runs:
        for what, attribute in (("gate selection", "selection"), ("shard count", "shard_count"),
                                ("device", "device"), ("hypothesis example scale", "example_scale"),
                                ("collection", "collection")):
            mine, theirs = getattr(run, attribute), getattr(first, attribute)
            if mine != theirs:
                raise ValueError(f"{name} and {first_name} are not shards of one run: another {what}"
                                 + ("" if what == "collection" else f" ({mine!r} vs {theirs!r})"))
        for shard in run.shards:
            if shard in seen:
                raise ValueError(f"shard {shard}/{run.shard_count} is in both {seen[shard]} and {name}")
            seen[shard] = name
    results: dict[str, LabelledResult] = {}
    for _, run in runs:
        results.update({r.nodeid: r for r in run.results})
    order = {t.nodeid: n for n, t in enumerate(first.collection)}
    statuses = [run.exitstatus for _, run in runs]
    return RunResults(
        gates=first.gates, keyword=first.keyword, markexpr=first.markexpr, device=first.device,
        shard_count=first.shard_count, shards=sorted(seen), collection=first.collection,
        results=sorted(results.values(), key=lambda r: (order.get(r.nodeid, len(order)), r.nodeid)),
        deselected=sorted({d for _, run in runs for d in run.deselected}),
        repro_runs={k: v for _, run in runs for k, v in run.repro_runs.items()},
        model_files={k: v for _, run in runs for k, v in run.model_files.items()},
        example_scale=first.example_scale,
        exitstatus=INTERRUPTED if INTERRUPTED in statuses else TESTS_FAILED if TESTS_FAILED in statuses else 0,
        gpu=first.gpu, commit=", ".join(dict.fromkeys(run.commit for _, run in runs if run.commit)))
