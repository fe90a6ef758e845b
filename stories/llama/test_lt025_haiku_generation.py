"""LT-025 Haiku generation test: the M0 success criterion (spec-digest §6), over HTTP.

Acceptance: a fixed prompt asks, through the model's own chat template, for a haiku about GPU
computing that includes the current minute written as a word (e.g. 42 -> "forty-two"), so the
answer cannot be pre-baked; temperature 0 and a fixed seed; streamed over SSE from a real
`python -m worker serve`; two runs give identical token ids; the minute word appears in the
output. It runs on every real instruct model available: SmolLM2-135M-Instruct always, and
Qwen2.5-0.5B-Instruct when M0_QWEN25_GGUF points at its GGUF file. A model that does not write the
word FAILS this check; it is not skipped.

The chat template is rendered here, by transformers' tokenizer from the same GGUF (not by our
code), and sent as the raw prompt; the worker does not apply templates itself.
"""
from datetime import datetime

import pytest

from fixtures.server_process import check_stream, execute, worker_server

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("LT-025")

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty"}
SEED = 20250101
MAX_TOKENS = 64


def minute_word(minute: int) -> str:
    """0..59 in English words, hyphenated like "forty-two"."""
    if minute < 20:
        return ONES[minute]
    tens, ones = divmod(minute, 10)
    return TENS[tens] + ("-" + ONES[ones] if ones else "")


def test_minute_words():       # the derivation itself, against hand-written values
    assert [minute_word(m) for m in (0, 7, 13, 20, 21, 42, 59)] == [
        "zero", "seven", "thirteen", "twenty", "twenty-one", "forty-two", "fifty-nine"]


def haiku_prompt(word: str) -> str:
    return (f'Write a haiku about GPU computing. The haiku must include the word "{word}". '
            "Reply with the haiku only.")


def contains_word(text: str, word: str) -> bool:
    """The word, case-insensitive; "forty-two" may also be written "forty two"."""
    import re

    pattern = r"\b" + re.escape(word.lower()).replace(r"\-", r"[-\s]") + r"\b"
    return re.search(pattern, text.lower()) is not None


def chat_prompt(gguf_path, user_text: str) -> tuple[str, int]:
    """The chat-formatted prompt and its length in tokens, both by transformers from the GGUF."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    return text, len(tokenizer(text)["input_ids"])


def run_haiku_test(server, gguf_path, record_property):
    word = minute_word(datetime.now().minute)
    prompt, prompt_tokens = chat_prompt(gguf_path, haiku_prompt(word))
    runs = []
    for n in range(2):
        response, events = execute(server.url, {"job_id": f"haiku-{n}", "prompt": prompt, "temperature": 0,
                                                "seed": SEED, "max_tokens": MAX_TOKENS})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        runs.append(check_stream(events))
        # The template's special tokens reached the model as special tokens, not as text.
        assert runs[-1]["started"]["prompt_tokens"] == prompt_tokens
    record_property("model", str(gguf_path))
    record_property("minute_word", word)
    record_property("haiku", runs[0]["text"])
    print(f"\nminute word: {word}\nhaiku ({gguf_path.name}):\n{runs[0]['text']}")
    assert runs[0]["terminal"] == runs[1]["terminal"] == "end"
    assert runs[0]["ids"] == runs[1]["ids"], "two greedy runs with the same seed gave different token ids"
    assert runs[0]["ids"], "the model wrote nothing"
    assert contains_word(runs[0]["text"], word), (
        f"{gguf_path.name} did not write the minute word {word!r}:\n{runs[0]['text']}")


@pytest.mark.needs_model("smollm2")
def test_haiku_smollm2(smollm2_server, record_property):
    from fixtures.paths import smollm2_path

    run_haiku_test(smollm2_server, smollm2_path(), record_property)


@pytest.mark.slow
@pytest.mark.needs_model("qwen2.5")
def test_haiku_qwen25_instruct(request, record_property):
    from fixtures.paths import user_model

    path = user_model("M0_QWEN25_GGUF")
    state = getattr(request.config, "_m0", None)
    with worker_server(path, device=state.device if state else "cpu") as server:
        run_haiku_test(server, path, record_property)
