"""Everything a run writes at its end: the gate board (JSON, Markdown, HTML), the plots, and the
Allure extras (gate verdicts, categories, executor, environment) beside allure-pytest's results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from gates.harness.allure_results import Evidence, git_commit, write_gate_verdicts, write_report_extras
from gates.harness.board import GateBoard, write_reports
from gates.harness.board_page import render_html
from gates.harness.environment import environment_properties
from gates.harness.plots import benchmark_ratios, plot_benchmark_ratios, plot_repro_runs

BOARD_FILES = ("gate-board.json", "gate-board.md", "gate-board.html")
PERF_GATE, REPRO_GATE = 4, 2      # where the benchmark and reproducibility plots are attached


def write_plots(reports_dir: Path, repro_runs: dict) -> dict[str, Path]:
    """name -> PNG written under reports/plots (only the plots that have data)."""
    plots_dir = reports_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    written = {}
    bench = plot_benchmark_ratios(benchmark_ratios(reports_dir), plots_dir / "benchmark-ratios.png")
    if bench:
        written["benchmark ratios"] = bench
    if repro_runs:
        (reports_dir / "repro-runs.json").write_text(json.dumps(repro_runs, indent=1) + "\n")
        repro = plot_repro_runs(repro_runs, plots_dir / "reproducibility.png")
        if repro:
            written["reproducibility runs"] = repro
    return written


def evidence_for(boards: list[GateBoard], reports_dir: Path, plots: dict[str, Path]) -> dict[int, list[Evidence]]:
    board_files = [Evidence("gate board (Markdown)", reports_dir / "gate-board.md", "text/markdown"),
                   Evidence("gate board (JSON)", reports_dir / "gate-board.json", "application/json"),
                   Evidence("gate board (HTML page)", reports_dir / "gate-board.html", "text/html")]
    out = {b.gate: list(board_files) for b in boards}
    if PERF_GATE in out:
        out[PERF_GATE] += [Evidence(f"benchmark: {p.name}", p, "application/json")
                           for p in sorted(reports_dir.glob("*.json"))
                           if p.name not in BOARD_FILES and p.name != "repro-runs.json"
                           and not p.name.startswith("gate-results")]
        if "benchmark ratios" in plots:
            out[PERF_GATE].append(Evidence("plot: benchmark ratios", plots["benchmark ratios"], "image/png"))
    if REPRO_GATE in out and "reproducibility runs" in plots:
        out[REPRO_GATE].append(Evidence("plot: reproducibility runs", plots["reproducibility runs"], "image/png"))
        out[REPRO_GATE].append(Evidence("reproducibility runs (JSON)", reports_dir / "repro-runs.json",
                                        "application/json"))
    return out


def write_run_reports(boards: list[GateBoard], device: str, gpu: str | None, model, reports_dir: Path,
                      alluredir: Path | None, root: Path, repro_runs: dict, start_ms: int,
                      notes: list[str] = (), commit: str | None = None) -> None:
    """`notes`: what makes the run less than a full one, said on every form of the board; `commit`: the
    commit the tests ran at (default: the one checked out under root)."""
    commit = commit or git_commit(root)
    plots: dict[str, Path] = {}
    if boards:
        write_reports(boards, device, reports_dir, notes)
        plots = write_plots(reports_dir, repro_runs)
        relative = {name: p.relative_to(reports_dir) for name, p in plots.items()}
        (reports_dir / "gate-board.html").write_text(render_html(boards, device, commit, relative, notes))
    if alluredir is None:
        return
    alluredir.mkdir(parents=True, exist_ok=True)
    write_report_extras(alluredir, boards, environment_properties(device, gpu, model), commit)
    if boards:
        write_gate_verdicts(alluredir, boards, evidence_for(boards, reports_dir, plots), start_ms,
                            int(time.time() * 1000))
