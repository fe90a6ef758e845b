"""How often a model passes the haiku test's word check: every minute word 0..59, greedy.

    python benchmarks/haiku_sweep.py [--model PATH] [--max-tokens 48] [--out reports/haiku-sweep.json]
    python benchmarks/haiku_sweep.py --model qwen2.5 --max-tokens 64 --out reports/haiku-sweep-qwen2.5.json

--model qwen2.5 is the suite's "qwen2.5" file (M0_QWEN25_GGUF, else the set-up's Qwen2.5-Coder file).

Runs in-process on the CPU reference (engine, not HTTP), with the model's own chat template
(worker.tokenizer) and fixtures.haiku's prompt and word rule. Writes the minutes that passed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.haiku import SEED, contains_word, haiku_prompt, minute_word  # noqa: E402
from fixtures.paths import user_model  # noqa: E402
from fixtures.real_models import describe_model_file  # noqa: E402


def main() -> int:
    from worker.default_model import default_model_path
    from worker.engine import Engine
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.sampling import SamplingParams
    from worker.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", default="reports/haiku-sweep.json")
    args = ap.parse_args()
    path = args.model or default_model_path()
    if path == "qwen2.5":
        path = user_model("M0_QWEN25_GGUF")
        if path is None:
            sys.exit("no qwen2.5 file: set M0_QWEN25_GGUF or run scripts/bootstrap.sh")
    gf = GGUFModelFile.open(path)
    tokenizer = load_tokenizer(gf)
    engine = Engine(load_model(gf, "cpu"), tokenizer)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Resume an interrupted sweep of the same model and settings: its minutes are kept.
    report = {"model": describe_model_file(Path(path)), "max_tokens": args.max_tokens, "seed": SEED,
              "minutes_passed": [], "texts": {}, "of": 60}
    if out.exists():
        old = json.loads(out.read_text())
        if all(old.get(k) == report[k] for k in ("model", "max_tokens", "seed")):
            report["minutes_passed"], report["texts"] = old["minutes_passed"], old["texts"]
    for minute in range(60):
        if str(minute) in report["texts"]:
            continue
        word = minute_word(minute)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": haiku_prompt(word)}],
                                               add_generation_prompt=True)
        params = SamplingParams(temperature=0, seed=SEED, max_tokens=args.max_tokens)
        text = "".join(getattr(ev, "text", "") or "" for ev in engine.generate(prompt, params))
        report["texts"][str(minute)] = text
        if contains_word(text, word):
            report["minutes_passed"] = sorted(report["minutes_passed"] + [minute])
        report["minutes_run"] = len(report["texts"])
        report["passed"] = len(report["minutes_passed"])
        out.write_text(json.dumps(report, indent=1))  # after every minute: an interrupted run keeps its part
        print(f"{minute:2d} {word:14s} {'yes' if minute in report['minutes_passed'] else 'no '} {text[:70]!r}",
              flush=True)
    print(f"{report['passed']} of 60 minute words written -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
