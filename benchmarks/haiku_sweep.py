"""How often a model passes the haiku test's word check: every minute word 0..59, greedy, over HTTP.

    python benchmarks/haiku_sweep.py [--model PATH] [--worker ours|llama.cpp] [--out reports/haiku-sweep.json]
    python benchmarks/haiku_sweep.py --model qwen2.5 --out reports/haiku-sweep-qwen2.5.json
    python benchmarks/haiku_sweep.py --model qwen2.5 --worker llama.cpp --out reports/haiku-sweep-qwen2.5-llama-cpp.json

--model qwen2.5 is the suite's "qwen2.5" file (M0_QWEN25_GGUF, else the set-up's Qwen2.5-Coder file);
no --model: the embedded SmolLM2. --worker llama.cpp sweeps the same requests through the llama.cpp
adapter (tools/llama_cpp_worker over llama.cpp's llama-server): a second implementation, so a word a
model misses can be told apart from a worker's mistake.

The requests are the haiku test's own (fixtures.haiku: prompt, chat template rendered by
transformers, seed, max_tokens, temperature 0). Writes the minutes that passed and every text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.haiku import MAX_TOKENS, SEED, chat_prompt, contains_word, haiku_prompt, haiku_request, minute_word  # noqa: E402
from fixtures.paths import user_model  # noqa: E402
from fixtures.real_models import describe_model_file  # noqa: E402
from fixtures.server_process import check_stream, execute  # noqa: E402


def started_worker(kind: str, path: Path, device: str):
    if kind == "llama.cpp":
        from fixtures.llama_cpp_worker import llama_cpp_worker

        return llama_cpp_worker(path)
    from fixtures.server_process import worker_server

    return worker_server(path, device=device)


def main() -> int:
    from worker.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--worker", choices=("ours", "llama.cpp"), default="ours")
    ap.add_argument("--device", default="cpu", help="our worker's --device")
    ap.add_argument("--out", default="reports/haiku-sweep.json")
    args = ap.parse_args()
    path = args.model or default_model_path()
    if path == "qwen2.5":
        path = user_model("M0_QWEN25_GGUF")
        if path is None:
            sys.exit("no qwen2.5 file: set M0_QWEN25_GGUF or run scripts/bootstrap.sh")
    path = Path(path)
    report = {"model": describe_model_file(path), "worker": args.worker,
              "device": args.device if args.worker == "ours" else "cpu (llama.cpp)",
              "prompt": haiku_prompt("{word}"), "max_tokens": MAX_TOKENS, "seed": SEED,
              "minutes_passed": [], "texts": {}, "of": 60}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with started_worker(args.worker, path, args.device) as server:
        for minute in range(60):
            word = minute_word(minute)
            response, events = execute(server.url, haiku_request(chat_prompt(path, haiku_prompt(word))[0]))
            assert response.status_code == 200, events
            text = check_stream(events)["text"]
            report["texts"][str(minute)] = text
            written = contains_word(text, word)
            if written:
                report["minutes_passed"].append(minute)
            print(f"{minute:2d} {word:14s} {'yes' if written else 'no '} {text[:70]!r}", flush=True)
    report["passed"] = len(report["minutes_passed"])
    report["minutes_missed"] = sorted(set(range(60)) - set(report["minutes_passed"]))
    out.write_text(json.dumps(report, indent=1))
    print(f"{report['passed']} of 60 minute words written -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
