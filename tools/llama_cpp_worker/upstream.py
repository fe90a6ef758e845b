"""The llama-server process that runs the model, and the three calls the adapter makes to it
(tools/server/README.md of llama.cpp: /tokenize, /completion, /props)."""
from __future__ import annotations

import dataclasses
import hashlib
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx

# The contract's sampling order (docs/sampling.md): penalties, temperature, then top-k, top-p and
# min-p over what is left; llama.cpp's default order applies temperature last.
SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]
LLAMA_DEFAULT_SEED = 0xFFFFFFFF    # llama.cpp: this seed means "pick a random one" (LLAMA_DEFAULT_SEED)


BUFFER_LINE = re.compile(r"\b(model|KV|compute|output) buffer size =\s*([0-9.]+) MiB")


class UpstreamError(RuntimeError):
    """llama-server failed or answered something unexpected."""


@dataclasses.dataclass(frozen=True)
class Step:
    token_id: int
    piece: bytes | None  # the token's bytes as llama.cpp detokenizes it (None: not returned)
    eog: bool            # an end-of-generation token (llama_vocab_is_eog): not part of the text
    prompt_ms: float     # time llama-server spent on the (uncached part of the) prompt


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def step_seed(seed: int, step: int) -> int:
    """One 32-bit llama.cpp seed per generated token, derived from the job's 64-bit seed: each
    upstream call samples one token with a fresh RNG, so each step needs its own seed."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest()
    value = int.from_bytes(digest, "little")
    return value if value != LLAMA_DEFAULT_SEED else value - 1


def _die_with_parent() -> None:
    """Linux: llama-server gets SIGTERM when the adapter dies, however it dies (prctl(2))."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except OSError:
        pass


class LlamaServer:
    """llama-server on a free loopback port: one slot (-np 1), the given context."""

    def __init__(self, binary: Path, model: Path, n_ctx: int, threads: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(n_ctx), "-np", "1", "--no-webui",
                # no host-memory copies of earlier prompts' KV state (one job at a time needs none)
                "--cache-ram", "0",
                # the buffer sizes (for /health's memory_bytes) are logged only above the default verbosity
                "-lv", "4"]
        if threads:
            args += ["-t", str(threads)]
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.buffer_bytes: dict[str, int] = {}
        threading.Thread(target=self._read_log, daemon=True).start()
        self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(600.0, connect=10.0))

    def _read_log(self) -> None:
        """Keep the buffer sizes llama.cpp logs at load (llama-model.cpp, llama-kv-cache.cpp,
        llama-context.cpp: "... model|KV|compute|output buffer size = X MiB"); drop the rest."""
        for raw in self.proc.stderr:
            match = BUFFER_LINE.search(raw.decode(errors="replace"))
            if match:
                kind = match.group(1)
                self.buffer_bytes[kind] = self.buffer_bytes.get(kind, 0) + round(float(match.group(2)) * 2 ** 20)

    def exited(self) -> int | None:
        return self.proc.poll()

    async def ready(self) -> bool:
        """llama-server's /health is 200 once the model is loaded (503 while loading)."""
        try:
            return (await self.client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def _post(self, path: str, body: dict) -> dict:
        try:
            response = await self.client.post(path, json=body)
        except httpx.TransportError as exc:
            raise UpstreamError(f"llama-server {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise UpstreamError(f"llama-server {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    async def props(self) -> dict:
        try:
            return (await self.client.get("/props")).json()
        except (httpx.TransportError, ValueError) as exc:
            raise UpstreamError(f"llama-server /props: {exc}") from None

    async def tokenize(self, text: str) -> list[int]:
        """The prompt's ids: BOS when the model asks for it (add_special), special-token text
        parsed as the special token (parse_special)."""
        answer = await self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})
        return [int(t) for t in answer["tokens"]]

    async def step(self, ids: list[int], job, step: int, seed: int) -> Step:
        """Sample one token after `ids` (the prompt and what was generated so far). After the first
        step the slot's prompt cache (cache_prompt) holds the previous ids: only the new one is evaluated."""
        body = {
            # The prompt is evaluated afresh in one batch for every job: a prompt found in the slot's
            # cache would get its last position re-evaluated alone, and logits of another batch shape
            # are not bit-identical (llama-server README, cache_prompt), so a seed would not replay.
            "prompt": ids, "n_predict": 1, "cache_prompt": step > 0, "stream": False, "return_tokens": True,
            "n_probs": 1, "samplers": SAMPLERS,
            "temperature": job.temperature, "top_k": job.top_k, "top_p": job.top_p, "min_p": job.min_p,
            "repeat_penalty": job.repetition_penalty, "repeat_last_n": job.repeat_last_n,
            "seed": step_seed(seed, step),
            # everything else off, whatever llama-server's defaults are
            "typical_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
            "xtc_probability": 0.0, "mirostat": 0, "min_keep": 0, "ignore_eos": False, "n_keep": 0,
        }
        answer = await self._post("/completion", body)
        tokens = answer.get("tokens") or []
        if len(tokens) != 1:
            raise UpstreamError(f"llama-server /completion gave no single token: tokens={tokens}, "
                                f"stop_type={answer.get('stop_type')}")
        eog = answer.get("stop_type") == "eos"
        # The bytes come only when the token's text is whole UTF-8 on its own (server-context.cpp,
        # process_token); otherwise None, and the caller takes them from the vocabulary.
        probs = [p for p in answer.get("completion_probabilities") or [] if p.get("id") == tokens[0]]
        piece = b"" if eog else bytes(probs[0]["bytes"]) if probs else None
        return Step(token_id=int(tokens[0]), piece=piece, eog=eog,
                    prompt_ms=float((answer.get("timings") or {}).get("prompt_ms", 0.0)))

    async def close(self) -> None:
        await self.client.aclose()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

