"""python -m tools.llama_cpp_worker --model FILE.gguf [--host H] [--port P] [--ctx N] [--llama-server PATH]"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

DEFAULT_MAX_CTX = 4096      # the contract's default context: the model's, at most 4096 (docs/http-api.md)


def llama_server_binary(explicit: str | None) -> Path:
    """--llama-server, $M0_LLAMA_SERVER, or the llama-server this repository builds (fixtures/llama_cpp.py)."""
    if explicit or os.environ.get("M0_LLAMA_SERVER"):
        return Path(explicit or os.environ["M0_LLAMA_SERVER"])
    from fixtures.llama_cpp import binary

    return binary("llama-server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.llama_cpp_worker", description=__doc__)
    parser.add_argument("--model", required=True, type=Path, help="GGUF file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port (see the `listening` line)")
    parser.add_argument("--ctx", type=int, default=None, help="context per request (default: the model's, <= 4096)")
    parser.add_argument("--llama-server", default=None, help="the llama-server binary")
    parser.add_argument("--threads", type=int, default=None, help="llama-server's -t")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    args = parser.parse_args(argv)

    import uvicorn

    from tools.llama_cpp_worker.app import WorkerState, make_app, narrate
    from tools.llama_cpp_worker.facts import read_file
    from tools.llama_cpp_worker.http11 import ContractH11Protocol
    from tools.llama_cpp_worker.upstream import LlamaServer

    if not args.model.is_file():
        narrate("startup_failed", code="MODEL_NOT_FOUND", message=f"no such file: {args.model}")
        return 2
    facts, vocabulary = read_file(args.model)
    n_ctx = args.ctx or min(facts.context_length, DEFAULT_MAX_CTX)
    try:
        binary = llama_server_binary(args.llama_server)
    except Exception as exc:          # the build failed or cannot run here: say why, no traceback
        narrate("startup_failed", code="MODEL_LOAD_FAILED", message=f"no llama-server: {exc}")
        return 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    upstream = LlamaServer(binary, args.model, n_ctx, args.threads)
    state = WorkerState(facts, vocabulary, upstream, args.max_body_bytes)
    narrate("listening", host=host, port=port, url=f"http://{host}:{port}", engine=str(binary), n_ctx=n_ctx)
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning", lifespan="on",
                                           http=ContractH11Protocol))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
