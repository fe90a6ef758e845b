"""FT-028 support Llama integration: the Foundation layer (HTTP server, engine, stop rules,
sampling) serves every Llama-team architecture end to end.

Acceptance, for tiny random llama, qwen2 and phi3 GGUF fixtures, each served by a real
`python -m worker serve --ctx 40` process:
- /health names the file and reports its architecture, vocabulary size and training context as
  gguf-py reads them from the file, and the served context (--ctx);
- a greedy request streams the ids transformers (CPU) generates from the same weights, with the
  prompt tokenized as transformers does and the text transformers' decoding; it ends `max_tokens`;
- a stop string cut from transformers' continuation ends the stream just before it (`stop_sequence`);
- without max_tokens the job runs to `context_full`, with context - prompt tokens generated;
- a prompt filling the whole context is refused with 400 PROMPT_TOO_LONG and the worker stays ready;
- a seeded sampled request repeats exactly.
"""
import pytest

from fixtures import integration as it

pytestmark = [pytest.mark.story("FT-028"), pytest.mark.worker_http]
CTX = 40
PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module", params=it.LLAMA_TINY)
def server(request, device):
    with it.served(it.model_case(f"tiny-{request.param}"), device, ctx=CTX) as server:
        yield server


def test_health_reports_the_file_as_gguf_py_reads_it(server):
    it.assert_health_reports_the_file(server.url, server.case.path(), server.launch_ctx)


def test_greedy_ids_over_http_equal_transformers(server):
    it.check_serves_greedy_like_transformers(server, PROMPT, 12, "ft028-greedy")


def test_stop_sequence_from_the_continuation_stops_there(server):
    it.check_stop_sequence_from_the_oracle_text(server, PROMPT, 12, "ft028-stop")


def test_without_max_tokens_the_job_runs_to_context_full(server):
    it.check_context_full(server, PROMPT, "ft028-ctx")


def test_a_prompt_filling_the_context_is_refused(server):
    it.check_prompt_too_long(server, "ft028-too-long")


def test_a_seeded_sampled_request_repeats_exactly(server):
    it.check_seeded_reproducibility(server, "Once upon a time", 10, "ft028-seeded")
