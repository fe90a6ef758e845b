"""`python -m worker gates --merge FILE...`: the gate board of one run from its shards' results files.

Refuses (ValueError) files that are not shards of one run; a shard without a file leaves its tests NOT RUN.
Writes what a run writes at its end (gate-board.json/.md/.html, plots, gate-results.json), prints the board
and answers the exit status the run would have had.
"""
from __future__ import annotations

import time
from pathlib import Path

from gates.harness.board import render_text
from gates.harness.run_reports import write_run_reports
from gates.harness.run_results import (
    board_exit_status,
    board_notes,
    boards_from_results,
    load_gate_definitions,
    load_results,
    merge_results,
    results_file_name,
    write_results,
)


def merge_board(files: list[Path], gates_dir: Path, reports_dir: Path, root: Path) -> int:
    run = merge_results([(str(path), load_results(path)) for path in files])
    manifests, titles = load_gate_definitions(gates_dir)
    unknown = [g for g in run.gates if g not in manifests]
    if unknown:
        raise ValueError(f"gates {unknown} of these results have no manifest under {gates_dir}")
    boards = boards_from_results(run, manifests, titles)
    notes = board_notes(run)
    write_results(run, reports_dir / results_file_name(None))
    write_run_reports(boards, run.device, run.gpu, None, reports_dir, None, root, run.repro_runs,
                      int(time.time() * 1000), notes, commit=run.commit)
    print(render_text(boards, run.device, notes))
    print(f"(merged {len(files)} results files; written to {reports_dir / 'gate-board.md'}, .json and .html)")
    return board_exit_status(run, boards)
