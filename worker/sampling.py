"""Sampling: validated parameters, and the sampler that turns one row of logits into a token id.

    params = SamplingParams.from_dict({"temperature": 0.7, "top_p": 0.9, "seed": 42})
    sampler = Sampler(params, seed=42)
    next_id = sampler.sample(logits_row, history)      # host float32/float64 logits [vocab]

The pipeline for one token (docs/sampling.md is the full statement):

1. repetition penalty (llama.cpp semantics) on the last `repeat_last_n` tokens of the sequence
   (prompt and generated tokens alike);
2. temperature 0 -> greedy: argmax, ties to the lowest id. Otherwise logits / temperature; a
   temperature so small that logits / temperature overflows float64 takes the limit T -> 0 of
   the softmax, which is greedy too (no NaN probabilities);
3. filters, in this order, each over what the previous one kept: top-k, top-p, min-p
   (the semantics of transformers' TopK / TopP / MinP logits warpers);
4. softmax over the kept tokens in float64, then ONE uniform draw u in [0, 1) from
   numpy.random.Generator(PCG64(seed)) and the inverse CDF over the kept tokens in ascending
   token-id order: the first kept id whose cumulative probability exceeds u * total.

Everything runs on the host in float64 over logits copied from the device, so every backend
samples the same ids from the same logits, and a seed replays the same ids after a restart.
"""
from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from worker.errors import InvalidParamsError, quote
from worker.sampling_fast import kept_distribution

U64_MAX = (1 << 64) - 1
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256            # a stop string longer than this is a mistake, not a use case
DEFAULT_MAX_TOKENS = 256        # when the request gives none; also capped by the context
DEFAULT_TEMPERATURE = 1.0
DEFAULT_REPEAT_LAST_N = 64      # llama.cpp's default penalty window


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling parameters, validated. Defaults switch every filter off.

    `max_tokens=None`: the engine's default, capped by what the context leaves (the job then
    ends with `context_full` if the context is the limit). `seed=None`: the engine picks one
    and reports it in the Started event.
    """

    max_tokens: int | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = DEFAULT_REPEAT_LAST_N
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
              "repeat_last_n", "seed", "stop")

    def __post_init__(self):
        _check_all(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingParams":
        """Build from a JSON-like mapping. Unknown keys are rejected (a misspelt parameter must
        not silently run with its default); None means "default" for every key."""
        if not isinstance(d, Mapping):
            raise InvalidParamsError("sampling parameters must be an object")
        unknown = sorted(set(d) - set(cls.FIELDS))
        if unknown:
            raise InvalidParamsError(f"unknown sampling parameter {unknown[0]!r}; accepted: "
                                     + ", ".join(cls.FIELDS), field=unknown[0])
        kwargs = {k: v for k, v in d.items() if v is not None}
        if "stop" in kwargs:
            kwargs["stop"] = _stop_list(kwargs["stop"])
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# -- validation ---------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _need(ok: bool, name: str, rule: str, value) -> None:
    if not ok:
        raise InvalidParamsError(f"{name} must be {rule}, got {quote(value)}", field=name)


def is_unicode_text(s: str) -> bool:
    """A str that is real Unicode text: no lone surrogate (JSON lets "\\udc00" through)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stop_list(value) -> tuple[str, ...]:
    _need(isinstance(value, (list, tuple)), "stop", f"a list of at most {MAX_STOP_SEQUENCES} non-empty strings",
          value)
    _need(len(value) <= MAX_STOP_SEQUENCES, "stop", f"at most {MAX_STOP_SEQUENCES} strings", value)
    for s in value:
        _need(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS, "stop",
              f"a list of non-empty strings of at most {MAX_STOP_CHARS} characters", value)
        _need(is_unicode_text(s), "stop", "a list of Unicode strings (a lone surrogate is not text)", value)
    return tuple(value)


def _check_all(p: SamplingParams) -> None:
    mt = p.max_tokens
    _need(mt is None or (_is_int(mt) and mt >= 1), "max_tokens", "an integer >= 1", mt)
    t = p.temperature
    _need(_is_number(t) and 0.0 <= t <= 2.0, "temperature", "a number from 0.0 to 2.0 (0 = greedy)", t)
    _need(_is_int(p.top_k) and p.top_k >= 0, "top_k", "an integer >= 0 (0 = off)", p.top_k)
    _need(_is_number(p.top_p) and 0.0 < p.top_p <= 1.0, "top_p", "a number in (0, 1] (1 = off)", p.top_p)
    _need(_is_number(p.min_p) and 0.0 <= p.min_p < 1.0, "min_p", "a number in [0, 1) (0 = off)", p.min_p)
    rp = p.repetition_penalty
    _need(_is_number(rp) and rp > 0.0, "repetition_penalty", "a number > 0 (1 = off)", rp)
    _need(_is_int(p.repeat_last_n) and p.repeat_last_n >= -1, "repeat_last_n",
          "an integer >= -1 (-1 = the whole sequence, 0 = off)", p.repeat_last_n)
    _need(p.seed is None or (_is_int(p.seed) and 0 <= p.seed <= U64_MAX), "seed",
          "an integer from 0 to 2^64-1", p.seed)
    _stop_list(p.stop)
    # Canonical types, so equal requests compare equal and print the same.
    object.__setattr__(p, "temperature", float(t))
    object.__setattr__(p, "top_p", float(p.top_p))
    object.__setattr__(p, "min_p", float(p.min_p))
    object.__setattr__(p, "repetition_penalty", float(rp))
    object.__setattr__(p, "top_k", int(p.top_k))
    object.__setattr__(p, "repeat_last_n", int(p.repeat_last_n))
    object.__setattr__(p, "stop", tuple(p.stop))
    if mt is not None:
        object.__setattr__(p, "max_tokens", int(mt))
    if p.seed is not None:
        object.__setattr__(p, "seed", int(p.seed))


def random_seed() -> int:
    """A fresh u64 seed for a request that gave none (reported back so it can be replayed)."""
    return secrets.randbits(64)


# -- the pipeline, one step per function (tests compare each with transformers) ---------------

def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float,
                             last_n: int = DEFAULT_REPEAT_LAST_N) -> np.ndarray:
    """llama.cpp: each distinct token among the last `last_n` of `history` (-1: all of it,
    0: none) gets logit / penalty when its logit is > 0, else logit * penalty."""
    out = np.array(logits, dtype=np.float64, copy=True)
    if penalty == 1.0 or last_n == 0 or len(history) == 0:
        return out
    window = history if last_n < 0 else history[-last_n:]
    ids = np.unique(np.asarray(window, dtype=np.int64))
    seen = out[ids]
    out[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / T (T > 0): T < 1 sharpens the distribution, T > 1 flattens it."""
    if temperature <= 0:
        raise ValueError("temperature 0 means greedy: take the argmax instead of scaling")
    return np.asarray(logits, dtype=np.float64) / temperature


def top_k_keep(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the tokens whose score is at least the k-th largest (ties at the k-th are all kept)."""
    keep = scores > -np.inf
    if k <= 0 or k >= scores.size:
        return keep
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    return keep & (scores >= kth)


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax in float64 over the finite scores; -inf scores get probability 0."""
    top = np.max(scores)
    e = np.exp(scores - top)
    return e / e.sum()


def top_p_keep(scores: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: walking from the most likely token down (ties: lower id first), keep each
    token while the probability of the tokens before it is below p (so the kept set is the
    smallest prefix whose mass reaches p; always at least one token)."""
    keep = scores > -np.inf
    if p >= 1.0:
        return keep
    probs = _softmax(scores)
    order = np.argsort(-scores, kind="stable")          # descending score, ascending id
    mass_before = np.cumsum(probs[order]) - probs[order]
    kept_in_order = mass_before < p
    kept_in_order[0] = True
    out = np.zeros_like(keep)
    out[order[kept_in_order]] = True
    return out & keep


def min_p_keep(scores: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    keep = scores > -np.inf
    if min_p <= 0.0:
        return keep
    probs = _softmax(scores)
    return keep & (probs >= min_p * probs.max())


def filtered_scores(logits: np.ndarray, params: SamplingParams, history: Sequence[int] = ()) -> np.ndarray:
    """Steps 1-3 for a non-greedy request: scaled logits, -inf where a filter removed the token."""
    scores = apply_repetition_penalty(logits, history, params.repetition_penalty, params.repeat_last_n)
    scores = apply_temperature(scores, params.temperature)
    for keep_fn, arg, active in ((top_k_keep, params.top_k, params.top_k > 0),
                                 (top_p_keep, params.top_p, params.top_p < 1.0),
                                 (min_p_keep, params.min_p, params.min_p > 0.0)):
        if active:
            scores = np.where(keep_fn(scores, arg), scores, -np.inf)
    return scores


def sampling_distribution(logits: np.ndarray, params: SamplingParams, history: Sequence[int] = ()) -> np.ndarray:
    """The probabilities the sampler draws from (float64, zeros for removed tokens)."""
    return _softmax(filtered_scores(logits, params, history))


def _scaling_overflows(logits: np.ndarray, temperature: float) -> bool:
    """Whether logits / temperature leaves float64 (a temperature like 1e-308): the softmax of
    such scores would be inf - inf = NaN. Its limit as T -> 0 is the argmax, which we take."""
    if temperature <= 0.0:
        return True
    x = np.asarray(logits, dtype=np.float64)
    largest = float(max(x.max(), -x.min()))      # max |x| without a vocabulary-sized temporary
    return largest / np.finfo(np.float64).max > temperature * (1.0 - 1e-12)


def greedy_pick(logits: np.ndarray) -> int:
    """The most likely token; ties go to the lowest id."""
    return int(np.argmax(logits))


def inverse_cdf_pick(probs: np.ndarray, u: float) -> int:
    """The first token id (ascending) whose cumulative probability exceeds u * total."""
    cdf = np.cumsum(probs, dtype=np.float64)
    i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    i = min(i, probs.size - 1)
    while probs[i] == 0.0:          # u * total landed exactly on a boundary: step to a kept token
        i -= 1
    return i


class Sampler:
    """One request's sampler: the parameters and the seeded random stream."""

    def __init__(self, params: SamplingParams, seed: int):
        if not (_is_int(seed) and 0 <= seed <= U64_MAX):
            raise InvalidParamsError(f"seed must be an integer from 0 to 2^64-1, got {seed!r}", field="seed")
        self.params = params
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Choose the next token from one row of logits; `history` is the sequence so far."""
        row = np.asarray(logits)
        if row.ndim != 1:
            raise ValueError(f"sample() takes one row of logits, got shape {row.shape}")
        if not np.all(np.isfinite(row)):
            bad = int(np.count_nonzero(~np.isfinite(row)))
            raise FloatingPointError(f"{bad} of {row.size} logits are NaN or infinite")
        p = self.params
        with np.errstate(over="ignore"):          # an overflow is handled below, not printed on stderr
            penalised = apply_repetition_penalty(row, history, p.repetition_penalty, p.repeat_last_n)
        if p.greedy or _scaling_overflows(penalised, p.temperature):
            return greedy_pick(penalised)
        # sampling_fast.py: the kept ids and sampling_distribution's probabilities at them, bit
        # for bit, without sorting the vocabulary; the pick over them is the same id.
        scores = np.divide(penalised, p.temperature, out=penalised)     # apply_temperature, in our own copy
        ids, probs = kept_distribution(scores, p.top_k, p.top_p, p.min_p, overwrite=True)
        return int(ids[inverse_cdf_pick(probs, float(self.rng.random()))])
