"""LT-025 Haiku generation test: the M0 success criterion (spec-digest §6), over HTTP.

Acceptance: a fixed prompt asks, through the model's own chat template, for a haiku about GPU
computing whose first line begins with the current minute written as a word (e.g. 42 -> "forty-two"), so the
answer cannot be pre-baked; temperature 0 and a fixed seed; streamed over SSE from a real
`python -m worker serve`; two runs give identical token ids; the minute word appears in the
output. It runs on every real instruct model available: SmolLM2-135M-Instruct always, and the
"qwen2.5" file: M0_QWEN25_GGUF's, else the Qwen2.5-Coder-0.5B-Instruct Q4_K_M file the set-up
assembles (same architecture, tokenizer and chat format as Qwen2.5-0.5B-Instruct, other weights).

On the qwen2.5 file (the story's model) a missing word FAILS; it is never skipped. SmolLM2-135M
runs the same request for the rest of the criterion (streamed, identical ids, the template's
special tokens); whether a 135M model writes the word is the model's instruction following, not
the worker's doing (benchmarks/haiku_sweep.py: the same minutes under llama.cpp), so its word is
recorded (property `minute_word_written`, with the haiku) and not counted.
"""
import pytest

from fixtures.haiku import contains_word, minute_word, run_haiku_twice
from fixtures.server_process import worker_server

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = [pytest.mark.story("LT-025"), pytest.mark.uses_device]


def test_minute_words():       # the derivation itself, against hand-written values
    assert [minute_word(m) for m in (0, 7, 13, 20, 21, 42, 59)] == [
        "zero", "seven", "thirteen", "twenty", "twenty-one", "forty-two", "fifty-nine"]
    assert contains_word("Forty two cores hum", "forty-two") and not contains_word("fortytwo", "forty-two")


def check_haiku(server, gguf_path, record_property, minute=None):
    result = run_haiku_twice(server.url, gguf_path, minute)
    record_property("model", str(gguf_path))
    record_property("minute_word", result.minute_word)
    record_property("haiku", result.text)
    print(f"\nminute word: {result.minute_word}\nhaiku ({gguf_path.name}):\n{result.text}")
    for run in result.runs:
        assert run["terminal"] == "end"
        # The template's special tokens reached the model as special tokens, not as text.
        assert run["started"]["prompt_tokens"] == result.prompt_tokens_expected
    assert result.first_ids == result.second_ids, "two greedy runs with the same seed gave different token ids"
    assert result.first_ids, "the model wrote nothing"
    return result


@pytest.mark.needs_model("smollm2")
def test_haiku_smollm2(smollm2_server, record_property):
    from fixtures.paths import smollm2_path

    result = check_haiku(smollm2_server, smollm2_path(), record_property)
    record_property("minute_word_written", result.minute_word_present)


# The current minute (the spec's test), and minute 45: asked only to "include" its word, the
# Qwen2.5-Coder file wrote "fifty-five" instead, under llama.cpp too.
@pytest.mark.worker_http
@pytest.mark.slow
@pytest.mark.needs_model("qwen2.5")
@pytest.mark.parametrize("minute", [None, 45], ids=["current-minute", "minute-45"])
def test_haiku_qwen25_instruct(request, record_property, minute):
    from fixtures.paths import user_model

    path = user_model("M0_QWEN25_GGUF")
    state = getattr(request.config, "_m0", None)
    with worker_server(path, device=state.device if state else "cpu") as server:
        result = check_haiku(server, path, record_property, minute)
    assert result.minute_word_present, (
        f"{path.name} did not write the minute word {result.minute_word!r}:\n{result.text}")
