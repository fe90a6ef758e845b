"""FT-024 HTTP-to-inference integration: a prompt over HTTP gives the model's real continuation.

Acceptance: the real SmolLM2-135M-Instruct served by `python -m worker serve` continues a prompt
greedily with the same token ids as transformers running the same GGUF on CPU (the oracle);
`prompt_tokens` equals transformers' tokenization; the streamed text equals the ids decoded by
transformers' tokenizer; a stop sequence taken from that continuation stops the stream there,
without emitting it; the same seeded sampled request gives the same ids twice.
"""
import pytest

from fixtures.server_process import check_stream, execute

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = [pytest.mark.story("FT-024"), pytest.mark.needs_model("smollm2")]

PROMPT = "The capital of France is"
N = 12


@pytest.fixture(scope="module")
def greedy(smollm2_server):
    _, events = execute(smollm2_server.url, {"job_id": "ft024-greedy", "prompt": PROMPT, "max_tokens": N,
                                             "temperature": 0, "seed": 1})
    return check_stream(events)


def test_greedy_ids_match_transformers(greedy):
    from fixtures.hf_reference import hf_greedy, smollm2_hf_model, smollm2_hf_tokenizer

    tokenizer = smollm2_hf_tokenizer()
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    assert greedy["started"]["prompt_tokens"] == len(prompt_ids)
    expected = hf_greedy(smollm2_hf_model(), prompt_ids, N)
    if greedy["end"]["stop_reason"] == "eos":          # we stop at EOS, the oracle does not
        expected = expected[: len(greedy["ids"])]
    assert greedy["ids"] == expected, (tokenizer.decode(greedy["ids"]), tokenizer.decode(expected))


def test_streamed_text_equals_the_decoded_ids(greedy):
    from fixtures.hf_reference import smollm2_hf_tokenizer

    assert greedy["text"] == smollm2_hf_tokenizer().decode(greedy["ids"], skip_special_tokens=True)
    assert "Paris" in greedy["text"]


def test_a_stop_sequence_from_the_continuation_stops_there(smollm2_server, greedy):
    text = greedy["text"]
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]                                   # a word in the middle of the continuation
    _, events = execute(smollm2_server.url, {"job_id": "ft024-stop", "prompt": PROMPT, "max_tokens": N,
                                             "temperature": 0, "seed": 1, "stop": [stop]})
    summary = check_stream(events)
    assert summary["end"]["stop_reason"] == "stop_sequence"
    assert summary["end"]["stop_sequence"] == stop
    assert summary["text"] == text[: text.index(stop)]


def test_a_seeded_sampled_request_repeats_exactly(smollm2_server):
    body = {"prompt": "My favourite colour is", "max_tokens": 10, "temperature": 1.0, "top_k": 40,
            "top_p": 0.95, "seed": 424242}
    runs = []
    for n in range(2):
        _, events = execute(smollm2_server.url, {**body, "job_id": f"ft024-seeded-{n}"})
        runs.append(check_stream(events)["ids"])
    assert runs[0] == runs[1]
