"""FT-017 Temperature scaling: logits are divided by the temperature before sampling.

Acceptance:
- for temperature T in (0, 2], the scaled logits equal transformers' TemperatureLogitsWarper
  and the sampling distribution equals softmax(logits / T) as torch computes it;
- T < 1 sharpens the distribution (lower entropy), T > 1 flattens it, T = 1 leaves it;
- T = 0 is greedy (see FT-018), and T outside [0, 2] is refused naming `temperature`.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from stories.foundation._sampling_oracle import hf_probs, hf_process, logit_rows, temperatures
from worker.errors import InvalidParamsError
from worker.sampling import SamplingParams, apply_temperature, sampling_distribution

pytestmark = pytest.mark.story("FT-017")


@settings(max_examples=200, deadline=None)
@given(logit_rows(), temperatures())
def test_scaled_logits_equal_transformers_temperature_warper(logits, t):
    ours = apply_temperature(logits, t)
    theirs = hf_process(logits, temperature=t)
    np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=0)


@settings(max_examples=200, deadline=None)
@given(logit_rows(), temperatures())
def test_sampling_distribution_is_torch_softmax_of_scaled_logits(logits, t):
    ours = sampling_distribution(logits, SamplingParams(temperature=t))
    theirs = hf_probs(logits, temperature=t)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    assert ours.sum() == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(logit_rows(min_size=3), st.floats(0.05, 0.95), st.floats(1.05, 2.0))
def test_low_temperature_sharpens_and_high_temperature_flattens(logits, low, high):
    if np.ptp(logits) < 1e-3:      # all logits equal: every temperature gives the uniform distribution
        return
    h = {t: entropy(sampling_distribution(logits, SamplingParams(temperature=t))) for t in (low, 1.0, high)}
    assert h[low] <= h[1.0] + 1e-12 and h[1.0] <= h[high] + 1e-12
    assert h[high] <= math.log(len(logits)) + 1e-9


def test_temperature_one_leaves_the_softmax_unchanged():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(sampling_distribution(logits, SamplingParams(temperature=1.0)), expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [-0.01, 2.0001, 3, float("nan"), float("inf"), "0.7", True, [1.0]])
def test_temperature_outside_0_to_2_is_refused(bad):
    with pytest.raises(InvalidParamsError) as e:
        SamplingParams.from_dict({"temperature": bad})
    assert e.value.field == "temperature" and e.value.code == "INVALID_PARAMS"


@pytest.mark.parametrize("ok", [0, 0.0, 1e-6, 1, 2, 2.0])
def test_temperature_bounds_are_accepted(ok):
    assert SamplingParams.from_dict({"temperature": ok}).temperature == float(ok)
