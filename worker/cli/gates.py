"""`python -m worker gates`: the main job — run gates 1 to 4 and print the combined gate board.

Runs pytest over gates/gate1..gate4 (each gate's own checks plus the story tests it requires) in
one session, so shared fixtures are built once; the plugin prints one board per gate, in order,
and writes reports/gate-board.{json,md,html}, reports/plots/ and reports/allure-results (emptied
first, so the report shows this run only).
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
    p.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest (after --)")
    p.set_defaults(func=run)


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "gates" / "harness").is_dir():
        raise SystemExit(f"gates/ not found beside the worker package ({root}): run from a source checkout")
    return root


def run(args) -> int:
    root = project_root()
    gates = args.gate or [1, 2, 3, 4]
    cmd = [sys.executable, "-m", "pytest", *[f"gates/gate{g}" for g in gates], "--device", args.device,
           "-p", "no:cacheprovider", "-q"]
    if args.model:
        cmd += ["--model", args.model]
    cmd += args.pytest_args
    print("+", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=root)
    print("board page: reports/gate-board.html; HTML report: bash scripts/allure-report.sh", flush=True)
    return status
