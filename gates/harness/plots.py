"""Pictures for the board: benchmark ratios (from reports/*.json) and reproducibility runs (what the
repro tests record as the `repro` user property). matplotlib, Agg backend, PNG files."""
from __future__ import annotations

import json
from pathlib import Path

RATIO_PREFIX = "ratio"
NAME_KEYS = ("name", "model", "shape", "case", "label", "file")


def find_ratios(data, where: str = "") -> list[tuple[str, str, float]]:
    """(where, "<ratio key>.<metric>", value) for every `ratio*` dict of numbers in a benchmark JSON.
    The key says the direction (ratios_ours_over_peer, ratio_peer_over_ours), so it stays in the label."""
    found = []
    if isinstance(data, dict):
        name = next((str(data[k]) for k in NAME_KEYS if isinstance(data.get(k), (str, int))), "")
        here = f"{where} {name}".strip()
        for key, value in data.items():
            if key.startswith(RATIO_PREFIX) and isinstance(value, dict):
                found += [(here, f"{key}.{m}", float(v)) for m, v in value.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)]
            elif isinstance(value, (dict, list)):
                found += find_ratios(value, here)
    elif isinstance(data, list):
        for item in data:
            found += find_ratios(item, where)
    return found


def benchmark_ratios(reports_dir: Path) -> dict[str, list[tuple[str, str, float]]]:
    """file name -> its ratios, for every benchmark JSON in reports/ (the board's own files excluded)."""
    out = {}
    for path in sorted(reports_dir.glob("*.json")):
        if path.name.startswith(("gate-board", "gate-results")) or path.name == "repro-runs.json":
            continue
        try:
            ratios = find_ratios(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if ratios:
            out[path.name] = ratios
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_benchmark_ratios(ratios: dict[str, list[tuple[str, str, float]]], out: Path) -> Path | None:
    rows = [(f"{file}: {where} {metric}".replace("  ", " "), value)
            for file, items in ratios.items() for where, metric, value in items]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.6))
    labels, values = zip(*rows)
    ax.barh(range(len(rows)), values, color=["#4caf50" if v >= 1 else "#e53935" for v in values])
    ax.axvline(1.0, color="#333", linewidth=1)
    ax.set_yticks(range(len(rows)), [label[:90] for label in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (the key names the direction: ours_over_peer on a rate, > 1 is faster)")
    ax.set_title("Benchmark ratios against the peer (reports/*.json)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plot_repro_runs(runs_by_label: dict[str, dict[str, list[list[int]]]], out: Path) -> Path | None:
    """One heatmap per recorded case: cell (i, j) is how many leading tokens seed i's first run shares
    with seed j's second run. A full diagonal is reproducibility; short off-diagonal cells show the
    seed matters."""
    cases = [(label, runs) for label, runs in runs_by_label.items() if runs]
    if not cases:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cases), figsize=(4.6 * len(cases), 4.4), squeeze=False)
    for ax, (label, runs) in zip(axes[0], cases):
        seeds = list(runs)
        length = max(len(r[0]) for r in runs.values()) or 1
        grid = [[common_prefix(runs[i][0], runs[j][1]) for j in seeds] for i in seeds]
        image = ax.imshow(grid, vmin=0, vmax=length, cmap="viridis")
        ax.set_xticks(range(len(seeds)), seeds, fontsize=7)
        ax.set_yticks(range(len(seeds)), seeds, fontsize=7)
        ax.set_xlabel("seed (second run)")
        ax.set_ylabel("seed (first run)")
        same = sum(runs[s][0] == runs[s][1] for s in seeds)
        ax.set_title(f"{label[:40]}\n{same}/{len(seeds)} seeds identical twice", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"identical leading tokens (of {length})")
    fig.suptitle("Reproducibility: same seed, same tokens", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
