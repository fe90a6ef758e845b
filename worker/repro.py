"""Reproducibility run: a fixed prompt, N seeds, each run R times in separate processes.

Every run is its own `python -m worker generate --json` process, so a match shows that the
seed alone fixes the ids: nothing carried over in memory, nothing depending on the process.
The report (JSON, reports/reproducibility.json by default) has, per seed, the SHA-256 of each
run's id list, whether the runs match, the ids and text of the first run; and over all seeds
whether every seed reproduced and whether different seeds gave different continuations.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_PROMPT = "Once upon a time, in a small village by the sea,"
DEFAULT_SEEDS = tuple(range(10))
DEFAULT_RUNS = 2
DEFAULT_MAX_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
REPORT_PATH = Path("reports") / "reproducibility.json"


def ids_digest(ids: list[int]) -> str:
    """SHA-256 of the ids written as a JSON list without spaces, e.g. "[1,2,3]"."""
    return hashlib.sha256(json.dumps(list(ids), separators=(",", ":")).encode()).hexdigest()


def generate_in_subprocess(model: str | None, prompt: str, seed: int, *, max_tokens: int, temperature: float,
                           device: str, extra_args: tuple[str, ...] = (), timeout_s: float = 900.0) -> dict:
    """One `python -m worker generate --json` process; its JSON result plus pid and wall time."""
    cmd = [sys.executable, "-m", "worker", "generate", "--json", "--prompt", prompt, "--seed", str(seed),
           "--max-tokens", str(max_tokens), "--temperature", repr(float(temperature)), "--device", device,
           *extra_args]
    if model is not None:
        cmd += ["--model", str(model)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout_s} s", "pid": proc.pid, "returncode": None}
    wall = time.perf_counter() - t0
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"no JSON result (exit {proc.returncode}): {err.strip()[-2000:]}"}
    result.update(pid=proc.pid, returncode=proc.returncode, wall_s=round(wall, 3))
    return result


def run_reproducibility(model: str | None = None, *, prompt: str = DEFAULT_PROMPT,
                        seeds=DEFAULT_SEEDS, runs: int = DEFAULT_RUNS, max_tokens: int = DEFAULT_MAX_TOKENS,
                        temperature: float = DEFAULT_TEMPERATURE, device: str = "cpu", jobs: int = 1,
                        extra_args: tuple[str, ...] = ()) -> dict:
    """Run every (seed, run) in its own process (`jobs` at a time) and build the report."""
    seeds = [int(s) for s in seeds]
    tasks = [(seed, k) for k in range(runs) for seed in seeds]   # run k of every seed before run k+1

    def one(task):
        seed, _ = task
        return generate_in_subprocess(model, prompt, seed, max_tokens=max_tokens, temperature=temperature,
                                      device=device, extra_args=extra_args)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = dict(zip(tasks, pool.map(one, tasks)))
    wall = time.perf_counter() - t0

    per_seed = []
    for seed in seeds:
        rs = [results[(seed, k)] for k in range(runs)]
        failed = [r["error"] for r in rs if "error" in r]
        digests = [ids_digest(r["ids"]) if "ids" in r else None for r in rs]
        first = rs[0]
        per_seed.append({
            "seed": seed,
            "runs": [{"ids_sha256": d, "tokens_out": r.get("tokens_out"), "stop_reason": r.get("stop_reason"),
                      "pid": r.get("pid"), "wall_s": r.get("wall_s"), **({"error": r["error"]} if "error" in r else {})}
                     for d, r in zip(digests, rs)],
            "identical": not failed and len(set(digests)) == 1,
            "ids": first.get("ids"),
            "text": first.get("text"),
        })
    first_digests = [s["runs"][0]["ids_sha256"] for s in per_seed if s["runs"][0]["ids_sha256"]]
    distinct = len(set(first_digests))
    all_identical = all(s["identical"] for s in per_seed)
    differ = distinct > 1
    first_ok = next((results[(s, 0)] for s in seeds if "error" not in results[(s, 0)]), {})
    return {
        "kind": "reproducibility",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "model": str(model) if model else first_ok.get("model"),
        "device": device,
        "host": {"platform": platform.platform(), "python": platform.python_version()},
        "prompt": prompt,
        "params": {"max_tokens": max_tokens, "temperature": temperature},
        "prompt_tokens": first_ok.get("prompt_tokens"),
        "seeds_count": len(seeds),
        "runs_per_seed": runs,
        "processes": len(tasks),
        "wall_s": round(wall, 3),
        "seeds": per_seed,
        "seeds_reproduced": sum(s["identical"] for s in per_seed),
        "all_identical": all_identical,
        "distinct_continuations": distinct,
        "different_seeds_differ": differ,
        "all_seeds_distinct": distinct == len(seeds),
        "passed": all_identical and differ,
    }


def write_report(report: dict, path: str | Path = REPORT_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
