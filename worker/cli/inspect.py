"""`python -m worker inspect PATH [--json] [--n-ctx N]`: what a GGUF file holds, or why it is refused.

Valid file: architecture, model config, tokenizer kind, tensor count and bytes per quant type,
file facts, and the estimated device memory at a context (default: the model's training
context). Invalid file: exit status 2 with the error code and message (also as JSON with
--json), never a traceback.
"""
from __future__ import annotations

import dataclasses
import json

from worker.cli import run_guarded


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show a GGUF file's architecture, config, tensors and memory need")
    p.add_argument("path", help="GGUF model file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context for the memory estimate (default: the model's context length)")
    p.set_defaults(func=run)


def describe(path: str, n_ctx: int | None = None) -> dict:
    from worker.gguf import TOKENIZER_KINDS, GGUFModelFile
    from worker.memory_estimate import estimate_device_bytes

    with GGUFModelFile.open(path) as gf:
        cfg = gf.config
        ctx = n_ctx or cfg.context_length
        config = dataclasses.asdict(cfg)
        return {
            "file": {"path": str(gf.path), "bytes": gf.file_size, "gguf_version": gf.version,
                     "alignment": gf.alignment, "tensor_count": len(gf.tensors),
                     "metadata_count": len(gf.metadata), "name": gf.metadata.get("general.name")},
            "architecture": cfg.architecture,
            "config": config,
            "tokenizer": {"model": cfg.tokenizer_model,
                          "kind": TOKENIZER_KINDS.get(cfg.tokenizer_model, cfg.tokenizer_model or "none"),
                          "pre": gf.metadata.get("tokenizer.ggml.pre")},
            "tensor_types": gf.tensor_bytes_by_type(),
            "memory_estimate": {"n_ctx": ctx, **estimate_device_bytes(gf, ctx)},
        }


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _print_text(info: dict) -> None:
    f, cfg, tok, mem = info["file"], info["config"], info["tokenizer"], info["memory_estimate"]
    print(f"file          {f['path']}  ({_mib(f['bytes'])}, GGUF v{f['gguf_version']}, "
          f"{f['tensor_count']} tensors, {f['metadata_count']} metadata keys)")
    if f["name"]:
        print(f"name          {f['name']}")
    print(f"architecture  {info['architecture']}")
    print(f"tokenizer     {tok['kind']} (tokenizer.ggml.model={tok['model'] or '-'}, pre={tok['pre'] or '-'})")
    print("config")
    for key, value in cfg.items():
        if key == "rope" and value:
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"  {key:<22}{value}")
    print("tensors by type")
    for name, row in sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"  {name:<8}{row['count']:>6} tensors  {_mib(row['bytes']):>14}")
    print(f"device memory at n_ctx={mem['n_ctx']}")
    for key in ("weights", "kv_cache", "workspace", "total"):
        print(f"  {key:<10}{_mib(mem[key]):>14}")


def run(args) -> int:
    def body() -> int:
        info = describe(args.path, args.n_ctx)
        if args.json:
            print(json.dumps({"path": args.path, "valid": True, **info}, default=str))
        else:
            _print_text(info)
        return 0

    return run_guarded(args, body, path=args.path, valid=False)
