"""FT-003 SSE streaming: events in order with the documented payloads, always valid UTF-8.

Acceptance: `started`, then one `token` {t, i, id} per token with consecutive indices, optional
`metrics`, then exactly one terminal `end` {tokens_out, decode_time_ms, stop_reason, ...} or
`error`; the stream is valid UTF-8 and every token text is whole characters, also when the model
writes characters that its tokens split (checked on the real SmolLM2 writing Japanese, emoji and
Cyrillic);
the concatenated token texts equal the ids decoded by transformers' tokenizer (the oracle).
"""
import httpx
import pytest

from fixtures.external_worker import NOT_RUN, external_worker
from fixtures.server_process import STOP_REASONS, check_stream, execute

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-003")


def test_event_order_and_payloads(tiny_server):
    response, events = execute(tiny_server.url, {"job_id": "ft003-order", "prompt": "Once upon a time",
                                                 "max_tokens": 40, "temperature": 0.8, "seed": 7})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    summary = check_stream(events)
    assert summary["terminal"] == "end"
    end = summary["end"]
    assert set(end) >= {"tokens_out", "decode_time_ms", "stop_reason"}
    assert end["stop_reason"] in STOP_REASONS
    if end["stop_reason"] == "max_tokens":
        assert end["tokens_out"] == 40
    else:
        assert end["stop_reason"] == "eos" and end["tokens_out"] < 40
    assert end["decode_time_ms"] >= 0
    vocab = httpx.get(tiny_server.url + "/health").json()["vocab_size"]
    assert all(0 <= t["id"] < vocab for t in summary["tokens"])


def test_metrics_events_count_the_tokens_so_far(tiny_server):
    _, events = execute(tiny_server.url, {"job_id": "ft003-metrics", "prompt": "Numbers:", "max_tokens": 40,
                                          "temperature": 1.0, "seed": 3})
    summary = check_stream(events)
    tokens_before = 0
    for name, data in events:
        if name == "token":
            tokens_before += 1
        elif name == "metrics":
            assert data["tokens_out"] == tokens_before
            assert data["decode_time_ms"] >= 0
    if summary["end"]["tokens_out"] >= 16:
        assert summary["metrics"], "a job of 16 tokens or more reports metrics"


def test_max_tokens_is_exact(tiny_server):
    for n in (1, 2, 5):
        _, events = execute(tiny_server.url, {"job_id": f"ft003-n{n}", "prompt": "The", "max_tokens": n,
                                              "temperature": 0})
        end = check_stream(events)["end"]
        assert end["tokens_out"] == n or end["stop_reason"] == "eos"
        if end["stop_reason"] == "max_tokens":
            assert end["tokens_out"] == n


# Prompts after which SmolLM2 (greedy) writes CJK, emoji or Cyrillic, whose characters its byte-level
# BPE tokens split: several tokens carry no whole character (their `t` is "").
MULTIBYTE_PROMPTS = ["Tokyo (東京) is", "Emoji: 😀 😃 😄", "Москва — столица"]


@pytest.mark.parametrize("prompt", MULTIBYTE_PROMPTS)
def test_multibyte_text_arrives_as_whole_characters(smollm2_server, prompt):
    from fixtures.hf_reference import smollm2_hf_tokenizer

    _, events = execute(smollm2_server.url, {"job_id": "ft003-utf8", "prompt": prompt, "max_tokens": 24,
                                             "temperature": 0, "seed": 1})
    summary = check_stream(events)          # also: strict UTF-8 decode of every line, no broken character
    split = [t for t in summary["tokens"] if t["t"] == ""]
    external = external_worker()
    if external is not None and not split:  # the prompts were picked from our worker's greedy output
        pytest.skip(f"{NOT_RUN}: its greedy continuation {summary['text']!r} splits no character across tokens, "
                    "so the case this check is about did not occur")
    assert any(ord(c) > 127 for c in summary["text"]), f"no multi-byte output to check: {summary['text']!r}"
    assert split, "no token ended inside a character: the case this test is about did not occur"
    # A character the job ended in the middle of comes out as U+FFFD, as in the reference decode.
    assert summary["text"] == smollm2_hf_tokenizer().decode(summary["ids"], skip_special_tokens=True)
