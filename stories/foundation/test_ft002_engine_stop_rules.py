"""FT-002 (engine side of /execute): how a job ends and what text it emits.

Acceptance:
- a stop sequence ends the job even when it is split over several tokens; the stop text and
  anything after it are never emitted; `stop_sequence` names it;
- text that might be the start of a stop string is held back until decided, then released;
- EOS ends the job (`eos`) and is not emitted; `max_tokens` ends it with `max_tokens`;
- every generated token has exactly one Token event (index 0, 1, ...), text possibly "";
- token texts are whole UTF-8 characters (FT-043), also with stop strings in play;
- the context bounds the job: prompt >= context -> PROMPT_TOO_LONG; prompt + max_tokens >
  context -> INVALID_PARAMS naming max_tokens; without max_tokens the job ends `context_full`;
- a failure after `started` ends the stream with End("error") and the KV cache is freed.

The model and tokenizer are scripted fakes (stories/foundation/_engine_fakes.py): the engine's
rules are what is tested. The oracle for stop sequences is the rule written out the slow way:
after each token, decode everything so far and look for each stop string with str.find.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.foundation._engine_fakes import FakeTokenizer, ScriptedModel, byte_vocab
from worker.engine import End, Engine, Started, Token
from worker.errors import InvalidParamsError, PromptTooLongError
from worker.sampling import SamplingParams

pytestmark = pytest.mark.story("FT-002")

GREEDY = dict(temperature=0.0)


def run(pieces, script, *, stops=(), max_tokens=None, eos=None, prompt=(1, 2, 3), n_ctx=512, **model_kw):
    tok = FakeTokenizer(pieces, eos=eos)
    ids = [tok.pieces.index(p) if isinstance(p, bytes) else p for p in script]
    model = ScriptedModel(ids, tok.vocab_size, context_length=n_ctx, **model_kw)
    engine = Engine(model, tok)
    params = SamplingParams(max_tokens=max_tokens, stop=tuple(stops), **GREEDY)
    events = list(engine.generate(list(prompt), params))
    return events, model


def split(events):
    assert isinstance(events[0], Started) and isinstance(events[-1], End)
    assert not any(isinstance(e, (Started, End)) for e in events[1:-1])
    tokens = events[1:-1]
    assert all(isinstance(t, Token) for t in tokens)
    assert [t.index for t in tokens] == list(range(len(tokens)))
    return events[0], tokens, events[-1]


WORDS = [b"Hel", b"lo", b" wor", b"ld", b"!", b"\n", b"\n\n", b"a", b"b"]
VOCAB = byte_vocab(WORDS)


# -- hand-picked cases -------------------------------------------------------------------------

def test_stop_sequence_split_over_tokens_stops_and_is_not_emitted():
    events, model = run(VOCAB, [b"Hel", b"lo", b" wor", b"ld", b"!"], stops=["o wo"], max_tokens=5)
    _, tokens, end = split(events)
    assert end.stop_reason == "stop_sequence" and end.stop_sequence == "o wo"
    assert [t.id for t in tokens] == [VOCAB.index(w) for w in (b"Hel", b"lo", b" wor")]
    assert "".join(t.text for t in tokens) + end.text == "Hell"
    assert end.tokens_out == 3
    assert model.backend.live_caches == 0


def test_text_that_only_looks_like_a_stop_start_is_released_later():
    events, _ = run(VOCAB, [b"a", b"\n", b"b", b"!"], stops=["\n\n"], max_tokens=4)
    _, tokens, end = split(events)
    assert [t.text for t in tokens] == ["a", "", "\nb", "!"]      # "\n" held one token, then released
    assert end.stop_reason == "max_tokens" and end.stop_sequence is None


def test_held_back_text_is_released_when_max_tokens_ends_the_job():
    events, _ = run(VOCAB, [b"a", b"\n"], stops=["\n\n"], max_tokens=2)
    _, tokens, end = split(events)
    assert [t.text for t in tokens] == ["a", "\n"]
    assert end.stop_reason == "max_tokens" and end.text == ""


def test_held_back_text_is_released_in_end_when_eos_ends_the_job():
    eos = VOCAB.index(b"!")
    events, _ = run(VOCAB, [b"a", b"\n", b"!"], stops=["\n\n"], max_tokens=8, eos=eos)
    _, tokens, end = split(events)
    assert [t.text for t in tokens] == ["a", ""]
    assert end.stop_reason == "eos" and end.text == "\n"
    assert eos not in [t.id for t in tokens], "EOS is not emitted as a token"
    assert end.tokens_out == 2


def test_stop_in_the_first_token_emits_nothing_before_it():
    events, _ = run(VOCAB, [b"\n\n", b"a"], stops=["\n\n"], max_tokens=4)
    _, tokens, end = split(events)
    assert [t.text for t in tokens] == [""] and end.stop_reason == "stop_sequence"


def test_text_after_the_stop_inside_the_same_token_is_dropped():
    events, _ = run(VOCAB, [b"a", b" wor", b"ld"], stops=["w"], max_tokens=3)
    _, tokens, end = split(events)
    assert "".join(t.text for t in tokens) + end.text == "a " and end.stop_sequence == "w"


def test_earliest_stop_wins_and_is_named():
    events, _ = run(VOCAB, [b"Hel", b"lo", b" wor"], stops=["lo w", "el"], max_tokens=3)
    _, tokens, end = split(events)
    assert end.stop_sequence == "el" and "".join(t.text for t in tokens) == "H"


@pytest.mark.story("FT-002", "FT-043")
def test_multibyte_character_split_over_tokens_comes_whole_with_the_completing_token():
    vocab = byte_vocab([b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98\x80"])     # é = C3 A9, 😀 = F0 9F 98 80
    events, _ = run(vocab, [b"a", b"\xc3", b"\xa9", b"\xf0\x9f", b"\x98\x80"], max_tokens=5)
    _, tokens, end = split(events)
    assert [t.text for t in tokens] == ["a", "", "é", "", "😀"]


@pytest.mark.story("FT-002", "FT-043")
def test_stop_string_ending_in_a_split_multibyte_character():
    vocab = byte_vocab([b"\xc3", b"\xa9"])
    events, _ = run(vocab, [b"c", b"a", b"f", b"\xc3", b"\xa9", b"!"], stops=["fé"], max_tokens=6)
    _, tokens, end = split(events)
    assert "".join(t.text for t in tokens) == "ca" and end.stop_sequence == "fé"


def test_eos_ends_the_job_and_is_not_emitted():
    eos = 300
    vocab = byte_vocab(WORDS + [b"<eos>"] * (eos - 256 - len(WORDS) + 1))
    events, model = run(vocab, [b"a", b"b", eos, b"a"], max_tokens=10, eos=eos)
    _, tokens, end = split(events)
    assert [t.id for t in tokens] == [vocab.index(b"a"), vocab.index(b"b")]
    assert end.stop_reason == "eos" and end.tokens_out == 2
    assert model.backend.live_caches == 0


def test_max_tokens_ends_the_job_after_exactly_that_many_tokens():
    events, model = run(VOCAB, [b"a"] * 20, max_tokens=7)
    _, tokens, end = split(events)
    assert len(tokens) == 7 and end.tokens_out == 7 and end.stop_reason == "max_tokens"
    # prefill once, then one forward per generated token except the last
    assert [n for _, n in model.forward_calls] == [3] + [1] * 6


# -- generated cases: the incremental matcher against the rule written out the slow way ---------

UNITS = [[b"a"], [b"b"], [b" "], [b"\n"], [b"ab"], [b"b\n"], [b"\n\n"], [b"\xc3", b"\xa9"], [b"\xe2", b"\x82\xac"]]
GEN_VOCAB = byte_vocab([b"ab", b"b\n", b"\n\n", b"\xc3", b"\xa9", b"\xe2", b"\x82\xac", b"<eos>"])
GEN_EOS = len(GEN_VOCAB) - 1
STOP_ALPHABET = "ab \né€"


def expected_outcome(script_ids, stops, max_tokens):
    """Generate token by token; after each, decode ALL bytes so far and search each stop string."""
    out = []
    for step in range(max_tokens):
        tid = script_ids[step] if step < len(script_ids) else 0     # the fake predicts 0 after its script
        if tid == GEN_EOS:
            return out, b"".join(GEN_VOCAB[i] for i in out).decode("utf-8", "replace"), "eos", None
        out.append(tid)
        so_far = b"".join(GEN_VOCAB[i] for i in out).decode("utf-8", "ignore")   # unfinished char: not yet
        hits = sorted((so_far.find(s), k, s) for k, s in enumerate(stops) if s in so_far)
        if hits:
            pos, _, stop = hits[0]
            return out, so_far[:pos], "stop_sequence", stop
    return out, b"".join(GEN_VOCAB[i] for i in out).decode("utf-8", "replace"), "max_tokens", None


@st.composite
def jobs(draw):
    units = draw(st.lists(st.sampled_from(UNITS + [[b"<eos>"]]), min_size=1, max_size=14))
    script = [GEN_VOCAB.index(p) for unit in units for p in unit]
    text = b"".join(GEN_VOCAB[i] for i in script if i != GEN_EOS).decode("utf-8", "ignore")
    stop_strategy = st.text(alphabet=STOP_ALPHABET, min_size=1, max_size=4)
    if text:   # stops that do occur in the text, so matches are common
        stop_strategy = st.one_of(stop_strategy, st.integers(0, len(text) - 1).flatmap(
            lambda i: st.integers(i + 1, min(len(text), i + 5)).map(lambda j: text[i:j])))
    stops = draw(st.lists(stop_strategy, max_size=4, unique=True))
    max_tokens = draw(st.integers(1, len(script) + 2))
    return script, stops, max_tokens


@pytest.mark.story("FT-002", "FT-043")
@settings(max_examples=300, deadline=None)
@given(jobs())
def test_stop_sequences_match_the_decode_everything_and_search_rule(job):
    script, stops, max_tokens = job
    events, model = run(GEN_VOCAB, script, stops=stops, max_tokens=max_tokens, eos=GEN_EOS)
    _, tokens, end = split(events)
    want_ids, want_text, want_reason, want_stop = expected_outcome(script, stops, max_tokens)
    assert [t.id for t in tokens] == want_ids
    assert "".join(t.text for t in tokens) + end.text == want_text
    assert (end.stop_reason, end.stop_sequence) == (want_reason, want_stop)
    assert end.tokens_out == len(tokens)
    if want_reason != "max_tokens":
        assert "\ufffd" not in "".join(t.text for t in tokens), "only a cut at max_tokens may leave a broken char"
    assert model.backend.live_caches == 0


# -- the context bounds the job ----------------------------------------------------------------

def test_prompt_as_long_as_the_context_is_refused_before_started():
    model = ScriptedModel([97], 300, context_length=8)
    engine = Engine(model, FakeTokenizer(byte_vocab()))
    with pytest.raises(PromptTooLongError) as e:
        next(engine.generate(list(range(1, 9)), SamplingParams(**GREEDY)))
    assert e.value.code == "PROMPT_TOO_LONG" and e.value.field == "prompt"
    assert model.backend.allocated == []


def test_max_tokens_beyond_the_context_is_refused_naming_max_tokens():
    engine = Engine(ScriptedModel([97], 300, context_length=8), FakeTokenizer(byte_vocab()))
    with pytest.raises(InvalidParamsError) as e:
        next(engine.generate([1, 2, 3], SamplingParams(max_tokens=6, **GREEDY)))
    assert e.value.code == "INVALID_PARAMS" and e.value.field == "max_tokens"


def test_prompt_plus_max_tokens_equal_to_the_context_runs_to_max_tokens():
    events, model = run(VOCAB, [97] * 10, max_tokens=5, n_ctx=8)
    _, tokens, end = split(events)
    assert end.stop_reason == "max_tokens" and len(tokens) == 5
    assert model.backend.allocated[0].size <= 8


def test_without_max_tokens_the_context_ends_the_job_with_context_full():
    events, _ = run(VOCAB, [97] * 20, n_ctx=8)
    start, tokens, end = split(events)
    assert start.max_tokens == 5 and len(tokens) == 5 and end.stop_reason == "context_full"


def test_engine_context_can_be_set_below_the_models():
    tok = FakeTokenizer(byte_vocab())
    engine = Engine(ScriptedModel([97] * 20, 256, context_length=512), tok, n_ctx=6)
    events = list(engine.generate([1, 2], SamplingParams(**GREEDY)))
    assert events[-1].stop_reason == "context_full" and events[-1].tokens_out == 4


def test_empty_prompt_is_refused():
    engine = Engine(ScriptedModel([97], 300), FakeTokenizer(byte_vocab()))
    for prompt in ("", []):
        with pytest.raises(InvalidParamsError) as e:
            next(engine.generate(prompt, SamplingParams()))
        assert e.value.field == "prompt"


def test_prompt_ids_outside_the_vocabulary_are_refused():
    engine = Engine(ScriptedModel([97], 300), FakeTokenizer(byte_vocab()))
    with pytest.raises(InvalidParamsError) as e:
        next(engine.generate([1, 256], SamplingParams()))
    assert e.value.field == "prompt"


# -- failures after started -------------------------------------------------------------------

def test_a_failing_forward_ends_with_an_error_event_and_frees_the_cache():
    events, model = run(VOCAB, [97] * 10, max_tokens=10, fail_at=3)
    _, tokens, end = split(events)
    assert len(tokens) == 3
    assert end.stop_reason == "error" and end.error_code == "INFERENCE_FAILED" and "simulated" in end.error
    assert model.backend.live_caches == 0


def test_nan_logits_end_with_an_error_event_not_a_token():
    events, model = run(VOCAB, [97] * 10, max_tokens=10, nan_at=2)
    _, tokens, end = split(events)
    assert len(tokens) == 2 and end.stop_reason == "error" and "NaN" in end.error
    assert model.backend.live_caches == 0


def test_a_consumer_that_stops_reading_still_frees_the_cache():
    tok = FakeTokenizer(VOCAB)
    model = ScriptedModel([97] * 10, tok.vocab_size)
    gen = Engine(model, tok).generate([1, 2], SamplingParams(max_tokens=10, **GREEDY))
    next(gen), next(gen), next(gen)
    assert model.backend.live_caches == 1
    gen.close()
    assert model.backend.live_caches == 0


class ModelRefusingItsOwnInput(ScriptedModel):
    """A model that raises InvalidParamsError mid-job: after Started that is our bug, not bad input."""

    def forward(self, ids, cache, start_pos):
        if start_pos > 0:
            raise InvalidParamsError("positions do not fit the KV cache", field="n_ctx")
        return super().forward(ids, cache, start_pos)


def test_an_invalid_params_error_after_started_is_internal_not_the_clients_fault():
    tok = FakeTokenizer(VOCAB)
    model = ModelRefusingItsOwnInput([97] * 10, tok.vocab_size)
    events = list(Engine(model, tok).generate([1, 2], SamplingParams(max_tokens=5, **GREEDY)))
    _, tokens, end = split(events)
    assert len(tokens) == 1
    assert end.stop_reason == "error" and end.error_code == "INTERNAL", end
    assert model.backend.live_caches == 0
