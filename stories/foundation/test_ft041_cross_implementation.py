"""FT-041 / FT-024 across implementations: our worker and a worker we did not write, side by side.

The second worker is tools/llama_cpp_worker: the M0 contract served in front of llama.cpp's own
`llama-server` (built from the llama.cpp vendored in the llama-cpp-python sdist). Both are started
on the same GGUF file with the same context. Acceptance, on SmolLM2-135M-Instruct (and, marked
slow, on the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M):
- the same bad request gets the same HTTP status, error code and field from both;
- the same prompt is the same number of tokens in both (special-token text, BOS and multi-byte
  text included), and llama.cpp's own tokenizer (llama-tokenize) gives our tokenizer's ids;
- greedy continuations agree token for token until a near-tie: where they first part, our NumPy
  backend's logits of the two chosen tokens differ by less than NEAR_TIE (the two engines round
  differently: llama.cpp quantizes activations to 8 bits for its CPU dot products, ours does not);
  the agreement and the first divergence with its margin are recorded;
- over the continuation both agree on, a stop string ends both streams at the same text, and the
  token events carry the same text (whole UTF-8 characters, held back alike).
"""
from __future__ import annotations

import functools
import json

import httpx
import numpy as np
import pytest

from fixtures.llama_cpp_worker import llama_cpp_worker
from fixtures.paths import smollm2_path, user_model
from fixtures.server_process import check_stream, execute, worker_server

pytestmark = [pytest.mark.story("FT-041", "FT-024")]

CTX = 512
# The largest logit gap (our NumPy logits) between the two tokens the engines chose at their first
# divergence that still counts as a near-tie. Measured on SmolLM2-135M Q4_1 (32 greedy tokens):
# divergences at gaps 0.08, 0.11 and 0.32; a gap of 0.5 is a probability ratio of 1.65, beyond
# what 8-bit activations move a 135M-0.5B model's logits, and is a real difference in the arithmetic.
NEAR_TIE = 0.5
MODELS = {"smollm2": (smollm2_path, 32), "qwen2.5": (functools.partial(user_model, "M0_QWEN25_GGUF"), 16)}
PROMPTS = {
    "prose": "The history of the printing press begins in",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "chat": "<|im_start|>user\nName three uses of a GPU, briefly.<|im_end|>\n<|im_start|>assistant\n",
    "emoji": "List of emoji with names:\n😀 grinning face\n🎉 party popper\n",
    # characters that no vocabulary holds whole: a continuation in kind comes as byte tokens (Qwen2.5's vocabulary
    # holds the common emoji whole, so "emoji" may give no token that ends inside a character)
    "glyphs": "Egyptian hieroglyphs, Unicode block U+13000:\n𓀀 man seated\n𓀁 man with hand to mouth\n𓀂",
}


@pytest.fixture(scope="module", params=["smollm2", pytest.param("qwen2.5", marks=pytest.mark.slow)])
def pair(request):
    """(our worker, the llama.cpp worker, model path, greedy length) on the same file and context."""
    path = MODELS[request.param][0]()
    if path is None:
        pytest.skip(f"model {request.param!r} not available")
    with worker_server(path, device="cpu", extra=["--ctx", str(CTX)], ready_timeout=1800) as ours, \
            llama_cpp_worker(path, ctx=CTX) as theirs:
        yield ours, theirs, path, MODELS[request.param][1]


def greedy(url: str, prompt: str, n: int, job_id: str, **extra) -> dict:
    response, events = execute(url, {"job_id": job_id, "prompt": prompt, "max_tokens": n, "temperature": 0, **extra})
    assert response.status_code == 200, events
    return check_stream(events)


@functools.lru_cache(maxsize=None)
def _both_greedy(ours_url: str, theirs_url: str, prompt_name: str, n: int) -> tuple[dict, dict]:
    prompt = PROMPTS[prompt_name]
    return (greedy(ours_url, prompt, n, f"x-ours-{prompt_name}"),
            greedy(theirs_url, prompt, n, f"x-theirs-{prompt_name}"))


def both_greedy(pair, prompt_name: str) -> tuple[dict, dict]:
    ours, theirs, _, n = pair
    return _both_greedy(ours.url, theirs.url, prompt_name, n)


def agreed_length(a: dict, b: dict) -> int:
    """How many leading token ids the two runs share."""
    k = 0
    while k < min(len(a["ids"]), len(b["ids"])) and a["ids"][k] == b["ids"][k]:
        k += 1
    return k


@functools.lru_cache(maxsize=2)
def _numpy_engine(path):
    from worker.engine import Engine
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.tokenizer import load_tokenizer

    gf = GGUFModelFile.open(path)
    return Engine(load_model(gf, "cpu"), load_tokenizer(gf), n_ctx=CTX)


def numpy_logits(path, ids: list[int]) -> np.ndarray:
    """Our NumPy backend's logits for the token after `ids`."""
    engine = _numpy_engine(path)
    model = engine.model
    cache = model.new_cache(len(ids))
    logits = model.forward(np.asarray(ids, dtype=np.int64), cache, 0)
    return np.asarray(model.backend.to_host(logits[-1]), dtype=np.float64)


# -- the same answers to the same bad requests ----------------------------------------------------

VALID = {"job_id": "x-bad", "prompt": "Hello", "max_tokens": 2}
BAD_REQUESTS = {
    "unknown-field": {**VALID, "temprature": 0.5},
    "temperature-above-2": {**VALID, "temperature": 2.5},
    "temperature-a-string": {**VALID, "temperature": "hot"},
    "top-p-zero": {**VALID, "top_p": 0},
    "top-k-negative": {**VALID, "top_k": -1},
    "min-p-one": {**VALID, "min_p": 1.0},
    "repetition-penalty-zero": {**VALID, "repetition_penalty": 0},
    "seed-negative": {**VALID, "seed": -1},
    "seed-above-u64": {**VALID, "seed": 2 ** 64},
    "max-tokens-zero": {**VALID, "max_tokens": 0},
    "max-tokens-a-bool": {**VALID, "max_tokens": True},
    "max-tokens-beyond-the-context": {**VALID, "max_tokens": CTX},
    "five-stop-strings": {**VALID, "stop": ["a", "b", "c", "d", "e"]},
    "empty-stop-string": {**VALID, "stop": [""]},
    "no-job-id": {"prompt": "Hello"},
    "empty-prompt": {**VALID, "prompt": ""},
    "prompt-a-number": {**VALID, "prompt": 42},
    "prompt-too-long": {**VALID, "prompt": "word " * CTX},
    "not-json": b"{not json",
    "nan": b'{"job_id": "x", "prompt": "Hi", "temperature": NaN}',
    "not-utf8": b'{"job_id": "x", "prompt": "\xff"}',
    "an-array": b"[1, 2]",
    "lone-surrogate": b'{"job_id": "x", "prompt": "ab \\ud83d cd"}',
    "too-large": {**VALID, "prompt": "x" * (1 << 20)},
}


def answer(url: str, body) -> tuple[int, str | None, str | None]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + "/execute", content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return response.status_code, data.get("code"), data.get("field")


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_the_same_bad_request_gets_the_same_status_code_and_field(pair, case):
    ours, theirs, _, _ = pair
    mine, other = answer(ours.url, BAD_REQUESTS[case]), answer(theirs.url, BAD_REQUESTS[case])
    assert mine[0] in (400, 413) and mine[1], mine
    assert other == mine, f"ours {mine}, llama.cpp worker {other}"


@pytest.mark.parametrize("method, path", [("GET", "/nowhere"), ("GET", "/execute"), ("DELETE", "/health")])
def test_unknown_routes_and_methods_get_the_same_codes(pair, method, path):
    ours, theirs, _, _ = pair
    answers = [httpx.request(method, w.url + path, timeout=30) for w in (ours, theirs)]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].json()["code"] == answers[1].json()["code"]


def test_a_cancel_of_an_unknown_job_and_a_bad_cancel_are_answered_alike(pair):
    ours, theirs, _, _ = pair
    for body in ({"job_id": "x-never"}, {}, {"job_id": "x", "extra": 1}):
        a, b = (httpx.post(w.url + "/cancel", json=body, timeout=30) for w in (ours, theirs))
        assert a.status_code == b.status_code, body
        assert (a.json().get("status"), a.json().get("code")) == (b.json().get("status"), b.json().get("code"))


# -- tokenization -------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
def test_the_same_prompt_is_the_same_tokens(pair, prompt_name):
    from fixtures.llama_cpp import tokenize
    from worker.gguf import GGUFModelFile
    from worker.tokenizer import load_tokenizer

    ours, theirs, path, _ = pair
    prompt = PROMPTS[prompt_name]
    counts = [greedy(w.url, prompt, 1, f"x-tok-{prompt_name}")["started"]["prompt_tokens"] for w in (ours, theirs)]
    assert counts[0] == counts[1], f"prompt_tokens: ours {counts[0]}, llama.cpp worker {counts[1]}"
    assert list(load_tokenizer(GGUFModelFile.open(path)).encode(prompt)) == tokenize(path, prompt)


# -- greedy continuations -------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
def test_greedy_continuations_agree_until_a_near_tie(pair, prompt_name, record_property):
    ours_run, their_run = both_greedy(pair, prompt_name)
    _, _, path, n = pair
    k = agreed_length(ours_run, their_run)
    record_property("agreement", f"{k}/{n}")
    if ours_run["ids"] == their_run["ids"]:
        assert ours_run["text"] == their_run["text"]
        assert ours_run["end"]["stop_reason"] == their_run["end"]["stop_reason"]
        print(f"\n{path.name} {prompt_name}: {k}/{n} greedy tokens agree")
        return
    # The first step where they part: the token each chose (None: it ended at eos there).
    mine = ours_run["ids"][k] if k < len(ours_run["ids"]) else None
    other = their_run["ids"][k] if k < len(their_run["ids"]) else None
    prompt_ids = list(_numpy_engine(path).prompt_ids(PROMPTS[prompt_name]))
    logits = numpy_logits(path, prompt_ids + ours_run["ids"][:k])
    eos = sorted(_numpy_engine(path).eos_ids)
    value = lambda token: logits[token] if token is not None else max(logits[e] for e in eos)  # noqa: E731
    margin = abs(value(mine) - value(other))
    top2 = np.sort(logits)[-2:]
    record_property("first_divergence", json.dumps({"step": k, "ours": mine, "llama_cpp": other,
                                                     "margin": round(float(margin), 4)}))
    print(f"\n{path.name} {prompt_name}: {k}/{n} agree; at step {k} ours {mine}, llama.cpp {other}, "
          f"NumPy logit gap between them {margin:.4f} (top-1 minus top-2 {top2[1] - top2[0]:.4f})")
    assert margin < NEAR_TIE, (f"the workers part at step {k} where the logits are {margin:.3f} apart: not a "
                               f"near-tie (ours {ours_run['text']!r}, llama.cpp {their_run['text']!r})")


# -- stop strings and UTF-8 streaming over the agreed continuation ---------------------------------

def test_a_stop_string_ends_both_streams_at_the_same_text(pair):
    ours, theirs, _, n = pair
    ours_run, their_run = both_greedy(pair, "prose")
    k = agreed_length(ours_run, their_run)
    texts = [t["t"] for t in ours_run["tokens"][:k]]
    stop = next((texts[i] + texts[i + 1] for i in range(2, k - 2)
                 if (texts[i] + texts[i + 1]).strip() and texts[i] and texts[i + 1]), None)
    if stop is None:
        pytest.skip(f"the workers agree on only {k} tokens: no stop string to cut from them")
    runs = [greedy(w.url, PROMPTS["prose"], n, "x-stop", stop=[stop]) for w in (ours, theirs)]
    for run in runs:
        assert run["end"]["stop_reason"] == "stop_sequence" and run["end"]["stop_sequence"] == stop, run["end"]
    assert runs[0]["text"] == runs[1]["text"] == ours_run["text"][: ours_run["text"].index(stop)]
    assert [t["t"] for t in runs[0]["tokens"]] == [t["t"] for t in runs[1]["tokens"]]


def test_token_events_carry_the_same_whole_characters(pair):
    ours_run, their_run = both_greedy(pair, "emoji")
    k = agreed_length(ours_run, their_run)
    assert k >= 4, f"the workers agree on only {k} tokens of the emoji continuation"
    # The last agreed token's text may still differ: what it releases depends on the next token.
    assert [t["t"] for t in ours_run["tokens"][:k - 1]] == [t["t"] for t in their_run["tokens"][:k - 1]]


def test_a_cut_inside_a_character_ends_both_with_one_replacement_character(pair):
    ours, theirs, _, _ = pair
    for prompt in ("emoji", "glyphs"):         # the first whose agreed continuation has a token inside a character
        ours_run, their_run = both_greedy(pair, prompt)
        k = agreed_length(ours_run, their_run)
        cut = next((i for i, t in enumerate(ours_run["tokens"][:k - 1], start=1) if t["t"] == ""), None)
        if cut is not None:
            break
    else:
        pytest.skip("no agreed token ends inside a character")
    runs = [greedy(w.url, PROMPTS[prompt], cut, "x-cut") for w in (ours, theirs)]
    assert runs[0]["ids"] == runs[1]["ids"]
    assert runs[0]["text"] == runs[1]["text"] and runs[0]["text"].endswith("\ufffd")
    assert runs[0]["text"].count("\ufffd") == 1
