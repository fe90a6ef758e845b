"""FT-005 Request validation (sampling side): every sampling parameter is checked, and a bad
one is refused with INVALID_PARAMS naming it.

Acceptance (docs/sampling.md, "Parameters"):
- defaults switch every filter off: top_k 0, top_p 1, min_p 0, repetition_penalty 1, no stop;
- ranges: max_tokens >= 1; temperature [0, 2]; top_k >= 0; top_p (0, 1]; min_p [0, 1);
  repetition_penalty > 0; seed 0..2^64-1; stop: a list of at most 4 non-empty strings;
- wrong types are refused (booleans are not numbers; a float is not an integer);
- unknown parameters are refused (a misspelt `temprature` must not run with the default).
"""
from __future__ import annotations

import pytest

from worker.errors import InvalidParamsError
from worker.sampling import SamplingParams

pytestmark = pytest.mark.story("FT-005")


def refused(d: dict) -> InvalidParamsError:
    with pytest.raises(InvalidParamsError) as e:
        SamplingParams.from_dict(d)
    assert e.value.code == "INVALID_PARAMS"
    return e.value


def test_defaults_switch_every_filter_off():
    p = SamplingParams.from_dict({})
    assert (p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.stop) == (0, 1.0, 0.0, 1.0, ())
    assert p.seed is None and p.max_tokens is None and 0.0 <= p.temperature <= 2.0


def test_all_parameters_at_their_bounds_are_accepted():
    p = SamplingParams.from_dict({"max_tokens": 1, "temperature": 2, "top_k": 0, "top_p": 1, "min_p": 0,
                                  "repetition_penalty": 1e-3, "seed": 2**64 - 1, "stop": ["a", "b", "c", "d"]})
    assert p.stop == ("a", "b", "c", "d") and p.temperature == 2.0 and isinstance(p.top_p, float)


@pytest.mark.parametrize("field,bad", [
    ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 2.0), ("max_tokens", "16"), ("max_tokens", False),
    ("temperature", 2.5), ("top_k", -1), ("top_p", 0), ("min_p", 1), ("repetition_penalty", 0),
    ("seed", -1), ("seed", 2**64),
    ("stop", "\n"), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", [1]), ("stop", ["ok", None]),
])
def test_out_of_range_or_wrong_type_is_refused_naming_the_field(field, bad):
    err = refused({field: bad})
    assert err.field == field and field in err.message


def test_unknown_parameter_is_refused_by_name():
    err = refused({"temprature": 0.5})
    assert err.field == "temprature"


def test_null_means_default():
    assert SamplingParams.from_dict({"top_k": None, "seed": None, "stop": None}) == SamplingParams()


def test_a_non_object_is_refused():
    refused(["temperature", 1.0])


@pytest.mark.parametrize("temperature", [1e-300, 1e-308, 1e-320, 5e-324])
def test_a_vanishing_temperature_samples_as_greedy_without_nan_or_warnings(temperature):
    """The limit T -> 0 of softmax(logits / T) is the argmax: where logits / T leaves float64 the
    sampler takes that limit instead of NaN probabilities (docs/sampling.md)."""
    import warnings

    import numpy as np

    from worker.sampling import Sampler

    rng = np.random.default_rng(11)
    for _ in range(20):
        logits = (rng.standard_normal(1000) * 8).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")              # a NumPy overflow warning fails the test
            ids = [Sampler(SamplingParams(temperature=temperature, top_p=0.9, min_p=0.05), seed).sample(logits)
                   for seed in range(5)]
        assert ids == [int(np.argmax(logits))] * 5
