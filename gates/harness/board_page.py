"""The gate board as one self-contained HTML page (reports/gate-board.html): a gates x checks grid
coloured by state, each gate's verdict, the device and models in the header, then every row's
reason, and links to the plots. Opens from disk, no script, no network."""
from __future__ import annotations

import html
from pathlib import Path

from gates.harness.board import FAIL, INCOMPLETE, NOT_RUN, PASS, GateBoard, overall_verdict

COLOURS = {PASS: "#4caf50", FAIL: "#e53935", NOT_RUN: "#9e9e9e", INCOMPLETE: "#f9a825"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { margin: 0 0 4px; font-size: 22px; } .meta { color: #555; margin-bottom: 16px; }
.badge { display: inline-block; white-space: nowrap; padding: 2px 10px; border-radius: 4px; color: #fff;
         font-weight: 600; }
.gate { display: flex; align-items: center; gap: 12px; margin: 6px 0; }
.gate .name { width: 270px; font-weight: 600; }
.cells { display: flex; flex-wrap: wrap; gap: 3px; max-width: 1100px; }
.cell { min-width: 58px; padding: 0 4px; white-space: nowrap; height: 22px; border-radius: 3px; color: #fff;
        font-size: 10px; text-align: center; line-height: 22px; overflow: hidden; text-decoration: none; }
.legend span { margin-right: 14px; } table { border-collapse: collapse; margin: 8px 0 24px; }
td, th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; font-size: 12px; text-align: left; }
img { max-width: 720px; border: 1px solid #ddd; margin: 6px 12px 6px 0; }
"""


def _badge(state: str) -> str:
    return f'<span class="badge" style="background:{COLOURS[state]}">{html.escape(state)}</span>'


def _models(boards: list[GateBoard]) -> list[str]:
    return sorted({name for b in boards for r in b.rows for name in r.model_names})


# What each plot needs, said on the page when a run had none of it.
PLOT_SOURCES = {
    "benchmark ratios": "no benchmark JSON in reports/ (benchmarks/*.py write it, side by side with a peer)",
    "reproducibility runs": "no reproducibility check ran (LT-026, G2-QWEN-REPRO record their seeds' runs)",
}


def _plots_section(plots: dict[str, Path]) -> str:
    e = html.escape
    parts = []
    for name, missing in PLOT_SOURCES.items():
        path = plots.get(name)
        if path is None:
            parts.append(f"<p><b>{e(name.capitalize())}</b>: no plot, {e(missing)}.</p>")
        else:
            parts.append(f'<p><b>{e(name.capitalize())}</b><br><a href="{e(path.as_posix())}">'
                         f'<img src="{e(path.as_posix())}" alt="{e(name)}"></a></p>')
    return "".join(parts)


def render_html(boards: list[GateBoard], device: str, commit: str = "", plots: dict[str, Path] | None = None,
                notes: list[str] = ()) -> str:
    """`plots`: name (a key of PLOT_SOURCES) -> PNG path relative to the page; `notes`: what makes the run
    less than a full one."""
    e = html.escape
    grid, details = [], []
    for b in boards:
        cells = "".join(
            f'<a class="cell" href="#{e(r.id)}" style="background:{COLOURS[r.status]}" '
            f'title="{e(r.status)}: {e(r.id)} {e(r.title)} - {e(r.reason)}">{e(r.id)}</a>' for r in b.rows)
        c = b.counts()
        grid.append(f'<div class="gate"><div class="name">Gate {b.gate}: {e(b.title)}<br>{_badge(b.verdict)} '
                    f'<small>{c[PASS]} pass, {c[FAIL]} fail, {c[NOT_RUN]} not run</small></div>'
                    f'<div class="cells">{cells}</div></div>')
        rows = "".join(
            f'<tr id="{e(r.id)}"><td>{_badge(r.status)}</td><td>{e(r.id)}</td><td>{e(r.title)}</td>'
            f'<td>{e(r.reason)}</td><td>{e(", ".join(r.model_names))}</td></tr>' for r in b.rows)
        details.append(f"<h2>Gate {b.gate}: {e(b.title)} {_badge(b.verdict)}</h2><p>{e(b.criteria)}</p>"
                       "<table><tr><th>state</th><th>id</th><th>required check</th><th>reason</th>"
                       f"<th>model file</th></tr>{rows}</table>")
    legend = "".join(f'<span>{_badge(s)}</span>' for s in (PASS, FAIL, NOT_RUN))
    models = ", ".join(_models(boards)) or "none recorded"
    pictures = _plots_section(plots or {})
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Gate board</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Gate board {_badge(overall_verdict(boards))}</h1>"
            f'<div class="meta">Device: <b>{e(device)}</b> &middot; commit {e(commit or "unknown")}'
            f"<br>Models: {e(models)}{''.join(f'<br><b>Note:</b> {e(note)}' for note in notes)}</div>"
            f'<div class="legend">{legend} a gate is PASS only when every required check ran and passed</div>'
            f"{''.join(grid)}<h2>Plots</h2>{pictures}{''.join(details)}</body></html>")
