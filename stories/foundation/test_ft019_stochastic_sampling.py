"""FT-019 Stochastic sampling: temperature, top-k, top-p, min-p and repetition penalty, then a draw.

Acceptance:
- each filter keeps the tokens transformers' warper keeps (TopKLogitsWarper, TopPLogitsWarper,
  MinPLogitsWarper), alone and chained after TemperatureLogitsWarper, on random logits with ties;
- the repetition penalty equals transformers' RepetitionPenaltyLogitsProcessor on the tokens in
  its window (ours: the last `repeat_last_n` tokens, llama.cpp's rule; transformers: the whole
  sequence, so the two agree when the sequence fits the window, and ours ignores older tokens);
- the sampler only ever returns kept tokens, and its frequencies follow the filtered softmax
  (transformers' chain + torch.softmax): chi-square test, 20 000 draws per case, fixed seeds, so
  the test is deterministic; a case fails when p < 0.001.

Where the two implementations may legitimately differ, the comparison says so:
- top-p with tied probabilities at the cut: which of the tied tokens is kept is an ordering
  detail (ours: the lower id; torch.sort: unspecified), so there we compare the kept
  probabilities as a multiset rather than the ids;
- a cumulative probability within 1e-9 of the threshold: float rounding decides; such draws
  are skipped (hypothesis `assume`).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from stories.foundation._sampling_oracle import hf_probs, hf_process, logit_rows, temperatures
from worker.errors import InvalidParamsError
from worker.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    filtered_scores,
    min_p_keep,
    top_k_keep,
    top_p_keep,
)

pytestmark = pytest.mark.story("FT-019")

P_MIN = 1e-3          # chi-square: a case fails when p < P_MIN
DRAWS = 20_000


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def near_top_p_boundary(scores: np.ndarray, p: float) -> bool:
    probs = _softmax(scores)
    desc = np.sort(probs)[::-1]
    before = np.cumsum(desc) - desc
    return bool(np.any(np.abs(before - p) < 1e-9) or np.any(np.abs(np.cumsum(desc) - p) < 1e-9))


def near_min_p_boundary(scores: np.ndarray, min_p: float) -> bool:
    probs = _softmax(scores)
    return bool(np.any(np.abs(probs - min_p * probs.max()) <= 1e-9 * probs.max()))


def same_kept(ours: np.ndarray, theirs_scores: np.ndarray, values: np.ndarray, ties_allowed: bool) -> None:
    theirs = np.isfinite(theirs_scores)
    if ties_allowed and not np.array_equal(ours, theirs):
        assert ours.sum() == theirs.sum(), "different number of kept tokens"
        np.testing.assert_array_equal(np.sort(values[ours]), np.sort(values[theirs]))
        return
    np.testing.assert_array_equal(ours, theirs)


# -- each filter against its transformers warper ------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(logit_rows(), st.integers(1, 70))
def test_top_k_keeps_what_transformers_keeps_ties_at_the_kth_included(logits, k):
    same_kept(top_k_keep(logits, k), hf_process(logits, top_k=k), logits, ties_allowed=False)


@settings(max_examples=300, deadline=None)
@given(logit_rows(), st.floats(0.01, 0.99))
def test_top_p_keeps_what_transformers_keeps(logits, p):
    assume(not near_top_p_boundary(logits, p))
    same_kept(top_p_keep(logits, p), hf_process(logits, top_p=p), logits, ties_allowed=True)


@settings(max_examples=300, deadline=None)
@given(logit_rows(), st.floats(0.001, 0.99))
def test_min_p_keeps_what_transformers_keeps(logits, min_p):
    assume(not near_min_p_boundary(logits, min_p))
    same_kept(min_p_keep(logits, min_p), hf_process(logits, min_p=min_p), logits, ties_allowed=False)


@settings(max_examples=300, deadline=None)
@given(logit_rows(), temperatures(), st.integers(0, 20), st.floats(0.05, 1.0), st.floats(0.0, 0.5))
def test_chained_filters_after_temperature_match_transformers(logits, t, k, p, min_p):
    params = SamplingParams(temperature=t, top_k=k, top_p=p, min_p=min_p)
    after_k = logits / t if k == 0 else np.where(top_k_keep(logits / t, k), logits / t, -np.inf)
    assume(p >= 1.0 or not near_top_p_boundary(after_k, p))
    after_p = after_k if p >= 1.0 else np.where(top_p_keep(after_k, p), after_k, -np.inf)
    assume(min_p == 0.0 or not near_min_p_boundary(after_p, min_p))
    ours = filtered_scores(logits, params)
    theirs = hf_process(logits, temperature=t, top_k=k, top_p=p, min_p=min_p)
    same_kept(np.isfinite(ours), theirs, logits, ties_allowed=True)
    if np.array_equal(np.isfinite(ours), np.isfinite(theirs)):
        np.testing.assert_allclose(_softmax(ours), hf_probs(logits, temperature=t, top_k=k, top_p=p, min_p=min_p),
                                   rtol=1e-9, atol=1e-15)


# -- repetition penalty ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(logit_rows(min_size=4), st.floats(0.2, 4.0), st.data())
def test_repetition_penalty_equals_transformers_when_the_sequence_fits_the_window(logits, penalty, data):
    history = data.draw(st.lists(st.integers(0, len(logits) - 1), min_size=1, max_size=64))
    ours = apply_repetition_penalty(logits, history, penalty, last_n=64)
    np.testing.assert_allclose(ours, hf_process(logits, repetition_penalty=penalty, history=history),
                               rtol=1e-15, atol=0)


@settings(max_examples=200, deadline=None)
@given(logit_rows(min_size=4), st.floats(0.2, 4.0), st.integers(1, 12), st.data())
def test_repetition_penalty_only_sees_the_last_n_tokens(logits, penalty, last_n, data):
    history = data.draw(st.lists(st.integers(0, len(logits) - 1), min_size=1, max_size=40))
    ours = apply_repetition_penalty(logits, history, penalty, last_n=last_n)
    windowed = hf_process(logits, repetition_penalty=penalty, history=history[-last_n:])
    np.testing.assert_allclose(ours, windowed, rtol=1e-15, atol=0)


def test_repetition_penalty_llama_cpp_rule_on_a_hand_picked_row():
    logits = np.array([2.0, -2.0, 0.0, 3.0])
    out = apply_repetition_penalty(logits, [0, 1, 2, 0], penalty=2.0)
    np.testing.assert_array_equal(out, [1.0, -4.0, 0.0, 3.0])     # positive / 2, negative * 2, unseen untouched
    np.testing.assert_array_equal(apply_repetition_penalty(logits, [0, 1], 2.0, last_n=0), logits)
    np.testing.assert_array_equal(apply_repetition_penalty(logits, [0, 1, 3, 3, 3], 2.0, last_n=-1),
                                  [1.0, -4.0, 0.0, 1.5])


# -- what the sampler draws ---------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(logit_rows(), temperatures(), st.integers(0, 10), st.floats(0.05, 1.0), st.floats(0.0, 0.5),
       st.integers(0, 2**64 - 1))
def test_sampled_tokens_are_always_kept_tokens(logits, t, k, p, min_p, seed):
    params = SamplingParams(temperature=t, top_k=k, top_p=p, min_p=min_p)
    kept = np.isfinite(filtered_scores(logits, params))
    sampler = Sampler(params, seed)
    assert all(kept[sampler.sample(logits)] for _ in range(20))


LOGITS = np.random.default_rng(20240601).normal(0.0, 1.5, size=12)
HISTORY = [3, 3, 7, 0]
CASES = {
    "plain T=1": dict(temperature=1.0),
    "T=0.6": dict(temperature=0.6),
    "T=1.7": dict(temperature=1.7),
    "top_k=5": dict(temperature=1.0, top_k=5),
    "top_p=0.8": dict(temperature=1.0, top_p=0.8),
    "min_p=0.1": dict(temperature=1.0, min_p=0.1),
    "all filters T=0.9": dict(temperature=0.9, top_k=8, top_p=0.9, min_p=0.05),
    "repetition_penalty=1.5": dict(temperature=1.0, repetition_penalty=1.5),
}


def draw_counts(params: SamplingParams, seed: int, history=()) -> np.ndarray:
    sampler = Sampler(params, seed)
    counts = np.zeros(LOGITS.size, np.int64)
    for _ in range(DRAWS):
        counts[sampler.sample(LOGITS.astype(np.float32), history)] += 1
    return counts


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_frequencies_follow_transformers_filtered_softmax(name):
    kw = CASES[name]
    history = HISTORY if "repetition_penalty" in kw else ()
    counts = draw_counts(SamplingParams(**kw), seed=1234, history=history)
    expected = hf_probs(LOGITS.astype(np.float32).astype(np.float64), history=history, **kw) * DRAWS
    removed = expected == 0
    assert counts[removed].sum() == 0, f"removed tokens were drawn: {np.nonzero(counts * removed)}"
    result = chisquare(counts[~removed], expected[~removed])
    assert result.pvalue > P_MIN, f"{name}: chi-square p={result.pvalue:.2e}, counts {counts}, expected {expected}"


def test_chi_square_check_can_tell_temperatures_apart():
    """The frequency test has power: draws at T=0.8 are rejected as samples of T=1."""
    counts = draw_counts(SamplingParams(temperature=0.8), seed=99)
    expected = hf_probs(LOGITS.astype(np.float32).astype(np.float64), temperature=1.0) * DRAWS
    assert chisquare(counts, expected).pvalue < P_MIN


# -- parameter ranges -----------------------------------------------------------------------------

@pytest.mark.parametrize("field,bad", [("top_k", -1), ("top_k", 1.5), ("top_k", True), ("top_p", 0.0),
                                       ("top_p", 1.01), ("top_p", -0.5), ("min_p", 1.0), ("min_p", -0.01),
                                       ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
                                       ("repetition_penalty", float("nan")), ("repeat_last_n", -2)])
def test_filter_parameters_out_of_range_are_refused_naming_the_field(field, bad):
    with pytest.raises(InvalidParamsError) as e:
        SamplingParams.from_dict({field: bad})
    assert e.value.field == field and field in e.value.message
