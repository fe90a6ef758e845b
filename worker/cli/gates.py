"""`python -m worker gates`: the main job — run gates 1 to 4 and print the combined gate board.

Runs pytest over gates/gate1..gate4 (each gate's own checks plus the story tests it requires) in
one session, so shared fixtures are built once; the plugin prints one board per gate, in order,
and writes reports/gate-board.{json,md,html}, reports/gate-results.json (the results the board was
built from), reports/plots/ and reports/allure-results (emptied first, so the report shows this run only).

A run too long for one sitting splits: `--shard I/N` runs shard I of N of the same selection
(gates/harness/shards.py) and writes reports/gate-results-shard-I-of-N.json; `--merge FILE...` builds
the board of the whole run from the shards' files (gates/harness/merge.py).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("gates", help="run gates 1-4 and print the gate board (the main job)")
    p.add_argument("--gate", type=int, action="append", choices=[1, 2, 3, 4],
                   help="run only this gate (repeatable; default: all four)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default=None, help="GGUF file for the model checks (default: SmolLM2)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N of the selected tests; merge the shards' results with --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                   help="run nothing: build the board from these results files (reports/gate-results-shard-*.json)")
    p.add_argument("--gates-dir", default=None, help="where the gate manifests live (default: gates/)")
    p.add_argument("--reports-dir", default=None, help="where the board and results go (default: reports/)")
    p.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest (after --)")
    p.set_defaults(func=run)


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "gates" / "harness").is_dir():
        raise SystemExit(f"gates/ not found beside the worker package ({root}): run from a source checkout")
    return root


def run(args) -> int:
    root = project_root()
    if args.merge:
        return merge(args, root)
    gates = args.gate or [1, 2, 3, 4]
    cmd = [sys.executable, "-m", "pytest", *[f"gates/gate{g}" for g in gates], "--device", args.device,
           "-p", "no:cacheprovider", "-q"]
    if args.model:
        cmd += ["--model", args.model]
    if args.shard:
        from gates.harness.shards import parse_shard

        try:
            cmd += ["--m0-shard", str(parse_shard(args.shard))]
        except ValueError as exc:
            print(f"gates: {exc}", file=sys.stderr)
            return 2
    for option, value in (("--gates-dir", args.gates_dir), ("--reports-dir", args.reports_dir)):
        if value:
            cmd += [option, str(Path(value).resolve())]
    cmd += args.pytest_args
    print("+", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=root)
    print("board page: reports/gate-board.html; HTML report: bash scripts/allure-report.sh", flush=True)
    return status


def merge(args, root: Path) -> int:
    from gates.harness.merge import merge_board

    try:
        return merge_board([Path(f) for f in args.merge], Path(args.gates_dir or root / "gates"),
                           Path(args.reports_dir or root / "reports"), root)
    except ValueError as exc:
        print(f"gates --merge: refused: {exc}", file=sys.stderr)
        return 2
