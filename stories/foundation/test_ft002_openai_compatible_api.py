"""FT-002 / FT-003, the OpenAI-compatible API: the official `openai` client as a real client.

Acceptance (docs/http-api.md, "OpenAI-compatible API"):
- GET /v1/models lists the one model served; /v1/completions and /v1/chat/completions answer
  the client's calls, plain and streamed, with usage and finish_reason; max_tokens, temperature,
  top_p, stop and seed have their OpenAI meaning;
- the same engine as /execute: the same greedy text for the same prompt; the chat reply uses the
  model's chat template, and equals what transformers' greedy generation gives for the same
  conversation on the same file (the oracle, on the real SmolLM2);
- the same validation and busy rules: bad input is a 400 in OpenAI's error shape naming the
  parameter, a second job while one runs is 503 WORKER_BUSY; closing a stream cancels its job.
"""
import threading

import httpx
import pytest

from fixtures.external_worker import require_extension
from fixtures.server_process import check_stream, execute

# a test extra (pyproject.toml); a GPU machine that lacks it still collects the GPU suite
openai = pytest.importorskip("openai")

pytest_plugins = ["fixtures.server_fixtures"]
pytestmark = pytest.mark.story("FT-002")


def client_for(server) -> openai.OpenAI:
    require_extension(server, "/v1/models", "the OpenAI-compatible API")
    # max_retries=0: a 503 must be seen, not retried away by the client.
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def model_id(server) -> str:
    return httpx.get(server.url + "/health").json()["model"]


def test_models_lists_the_one_model(tiny_server):
    models = client_for(tiny_server).models.list().data
    assert [m.id for m in models] == [model_id(tiny_server)]
    assert models[0].object == "model"


def test_a_completion_is_the_same_engine_as_execute(tiny_server):
    client = client_for(tiny_server)
    done = client.completions.create(model=model_id(tiny_server), prompt="Once upon a time", max_tokens=12,
                                     temperature=0, seed=1)
    _, events = execute(tiny_server.url, {"job_id": "ft002-oa-ref", "prompt": "Once upon a time", "max_tokens": 12,
                                          "temperature": 0, "seed": 1})
    reference = check_stream(events)
    choice = done.choices[0]
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert choice.text == reference["text"]
    assert choice.finish_reason == {"max_tokens": "length", "eos": "stop"}[reference["end"]["stop_reason"]]
    assert done.usage.prompt_tokens == reference["started"]["prompt_tokens"]
    assert done.usage.completion_tokens == reference["end"]["tokens_out"]
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens


def test_a_streamed_completion_gives_the_same_text_and_usage(tiny_server):
    client = client_for(tiny_server)
    args = dict(model=model_id(tiny_server), prompt="The weather today", max_tokens=20, temperature=0.9, top_p=0.9,
                seed=42)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text                       # the seed replays the same tokens
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_plain_and_streamed_agree(tiny_server):
    client = client_for(tiny_server)
    args = dict(model=model_id(tiny_server), messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Say hello."}],
                max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**args)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(**args, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_stop_string_ends_the_completion_before_it(tiny_server):
    client = client_for(tiny_server)
    args = dict(model=model_id(tiny_server), prompt="Once upon a time", max_tokens=30, temperature=0)
    free = client.completions.create(**args).choices[0].text
    stop = free[len(free) // 2:len(free) // 2 + 3]
    assert len(stop) == 3 and free.index(stop) > 0, free
    stopped = client.completions.create(**args, stop=stop).choices[0]
    assert stopped.text == free[:free.index(stop)]
    assert stopped.finish_reason == "stop"


@pytest.mark.parametrize("call, param", [
    (lambda c, m: c.completions.create(model=m, prompt="Hi", temperature=5), "temperature"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", top_p=0), "top_p"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", max_tokens=0), "max_tokens"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", max_tokens=100000), "max_tokens"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", n=2), "n"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", stop=["a", "b", "c", "d", "e"]), "stop"),
    (lambda c, m: c.completions.create(model=m, prompt="Hi", extra_body={"temprature": 0.5}), "temprature"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[]), "messages"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "robot", "content": "x"}]), "messages"),
])
def test_bad_input_is_a_400_in_openais_error_shape(tiny_server, call, param):
    with pytest.raises(openai.BadRequestError) as refused:
        call(client_for(tiny_server), model_id(tiny_server))
    error = refused.value.body
    assert refused.value.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["code"] in ("INVALID_PARAMS", "PROMPT_TOO_LONG") and error["message"]


def test_a_second_job_is_busy_and_closing_the_stream_cancels_the_first(smollm2_server):
    client = client_for(smollm2_server)
    model = model_id(smollm2_server)
    stream = client.chat.completions.create(model=model, stream=True, max_tokens=200, temperature=0,
                                            messages=[{"role": "user", "content": "Tell me a long story."}])
    job_id = None
    for chunk in stream:
        job_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            break                                          # the job is running: one token is out
    with pytest.raises(openai.APIStatusError) as busy:
        client.completions.create(model=model, prompt="Hi", max_tokens=2)
    assert busy.value.status_code == 503 and busy.value.body["code"] == "WORKER_BUSY"
    with pytest.raises(openai.BadRequestError):            # validation still comes first
        client.completions.create(model=model, prompt="Hi", temperature=-1)
    stream.close()                                         # the client goes away mid-stream
    finished = smollm2_server.wait_for(lambda r: r["event"] == "job_finished" and r.get("job_id") == job_id,
                                       timeout=120)
    assert finished["stop_reason"] == "cancelled" and finished["tokens_out"] < 200
    assert client.completions.create(model=model, prompt="Hi", max_tokens=1).choices[0].finish_reason


def test_cancel_works_on_the_response_id(smollm2_server):
    client = client_for(smollm2_server)
    stream = client.completions.create(model=model_id(smollm2_server), prompt="Once upon a time", max_tokens=200,
                                       temperature=0, stream=True)
    reasons, cancelled = [], threading.Event()
    for chunk in stream:
        if not cancelled.is_set():
            answer = httpx.post(smollm2_server.url + "/cancel", json={"job_id": chunk.id}).json()
            assert answer["status"] == "cancelling"
            cancelled.set()
        reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert reasons == ["cancelled"]


@pytest.mark.needs_model("smollm2")
def test_the_chat_reply_equals_transformers_greedy_generation(smollm2_server):
    """The same conversation through transformers (its own chat template rendering, tokenizer and
    model, read from the same GGUF file) and through /v1/chat/completions: the same greedy reply."""
    import torch

    from fixtures.hf_reference import smollm2_hf_model, smollm2_hf_tokenizer

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    n_tokens = 24
    tokenizer, model = smollm2_hf_tokenizer(), smollm2_hf_model()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False, eos_token_id=end_ids,
                             pad_token_id=end_ids[0], attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    theirs = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    reply = client_for(smollm2_server).chat.completions.create(model=model_id(smollm2_server), messages=messages,
                                                                max_tokens=n_tokens, temperature=0)
    assert reply.usage.prompt_tokens == len(ids)            # the same template, the same tokens
    assert reply.choices[0].message.content == theirs
    assert "Paris" in theirs


def test_a_client_that_gives_up_on_a_plain_completion_cancels_its_job(tiny_server):
    client_for(tiny_server)                                 # the /v1 routes are served
    body = {"model": model_id(tiny_server), "prompt": "Once upon a time", "max_tokens": 250, "temperature": 0,
            "user": "ft002-gives-up"}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(tiny_server.url + "/v1/completions", json=body, timeout=0.3)
    finished = tiny_server.wait_for(lambda r: r["event"] == "job_finished" and r.get("job_id", "").startswith("cmpl-")
                                    and r.get("cancel_requested"), timeout=60)
    assert finished["stop_reason"] == "cancelled" and finished["tokens_out"] < 250
    assert httpx.get(tiny_server.url + "/health").json()["job"] is None
