"""`python -m worker repro`: the reproducibility run (fixed prompt, 10 seeds, twice each, in
separate processes) and its report, reports/reproducibility.json by default.

    python -m worker repro                               # embedded SmolLM2, cpu, 16 tokens, T=1
    python -m worker repro --model m.gguf --device cuda --out reports/reproducibility-cuda.json

Exit 0 when every seed reproduced its ids and different seeds gave different continuations,
1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

from worker.cli import EXIT_INVALID, report_failure


def register(sub) -> None:
    from worker import repro

    p = sub.add_parser("repro", help="reproducibility run: N seeds, each run twice in separate processes")
    p.add_argument("--model", default=None, help="GGUF model file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--prompt", default=repro.DEFAULT_PROMPT, help="the fixed prompt")
    p.add_argument("--seeds", type=int, default=len(repro.DEFAULT_SEEDS), help="seeds 0..N-1 (default 10)")
    p.add_argument("--runs", type=int, default=repro.DEFAULT_RUNS, help="runs per seed (default 2)")
    p.add_argument("--max-tokens", type=int, default=repro.DEFAULT_MAX_TOKENS, help="tokens per run (default 16)")
    p.add_argument("--temperature", type=float, default=repro.DEFAULT_TEMPERATURE, help="default 1.0")
    p.add_argument("--jobs", type=int, default=1, help="processes at a time (default 1)")
    p.add_argument("--out", default=str(repro.REPORT_PATH), help="report path (default reports/reproducibility.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from worker import repro

    if args.seeds < 2 or args.runs < 2 or args.max_tokens < 1 or args.jobs < 1:
        return report_failure(args, "INVALID_PARAMS", "--seeds and --runs must be >= 2, --max-tokens and --jobs >= 1",
                              EXIT_INVALID)
    report = repro.run_reproducibility(args.model, prompt=args.prompt, seeds=range(args.seeds), runs=args.runs,
                                       max_tokens=args.max_tokens, temperature=args.temperature,
                                       device=args.device, jobs=args.jobs)
    path = repro.write_report(report, args.out)
    for s in report["seeds"]:
        digests = ", ".join((r["ids_sha256"] or "ERROR")[:12] for r in s["runs"])
        print(f"seed {s['seed']:>3}: {'match   ' if s['identical'] else 'MISMATCH'} [{digests}] {s['text']!r}")
        for r in s["runs"]:
            if "error" in r:
                print(f"          error: {r['error']}")
    print(f"{report['seeds_reproduced']}/{report['seeds_count']} seeds reproduced over {report['processes']} "
          f"processes; {report['distinct_continuations']} distinct continuations; "
          f"{'PASS' if report['passed'] else 'FAIL'}; report {path}")
    return 0 if report["passed"] else 1
