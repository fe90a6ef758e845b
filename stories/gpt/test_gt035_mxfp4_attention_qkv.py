"""GT-035 MXFP4 attention QKV: GPT-OSS attention whose Q, K, V and output projections are MXFP4
weights (with float biases) gives the output of transformers' GptOssAttention holding the
gguf-py-dequantized weights — YaRN NEOX rope, GQA, learned sinks, with and without the sliding
window, as one prefill and as prefill + one-token decode steps through the KV cache.

Metric: ||ours - transformers||_F / ||transformers||_F; threshold 1e-5 (float32 rounding).
Error against the unquantized float weights (the plan cites ~1 % at the layer level): 0-level
(float rounding only, < 1e-5) for weights MXFP4 represents, as GPT-OSS's trained weights. For
Gaussian weights rounded after the fact by gguf-py, the format's ~11.5 % weight rounding passes
through q·k and the softmax: measured ~29 % at the attention output (recorded; asserted < 50 %
only as a sanity bound — a wrong nibble order or scale gives > 100 %). The ~1 % figure does not
hold for post-hoc MXFP4 rounding of Gaussian weights.
"""
import numpy as np
import pytest
import torch

from stories.gpt._mxfp4_helpers import gguf_dequantized, mxfp4_grid_weights, mxfp4_tensor, record, relative_error
from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig

pytestmark = pytest.mark.story("GT-035")

D, HEADS, KV_HEADS, HEAD_DIM, WINDOW, T = 128, 4, 2, 32, 4, 12
ROPE = dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
            truncate=False, original_max_position_embeddings=4096)
OUR_ROPE = RopeConfig(dim=HEAD_DIM, base=150000.0, style="neox", scaling="yarn", factor=32.0,
                      original_context=4096, beta_fast=32.0, beta_slow=1.0, truncate=False)


def float_weights(kind: str, seed: int = 35) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"q": (HEADS * HEAD_DIM, D), "k": (KV_HEADS * HEAD_DIM, D), "v": (KV_HEADS * HEAD_DIM, D),
              "o": (D, HEADS * HEAD_DIM)}
    if kind == "gaussian":
        weights = {n: rng.standard_normal(s).astype(np.float32) * np.float32(1.5 / s[1] ** 0.5)
                   for n, s in shapes.items()}
    else:                                   # values MXFP4 represents exactly
        weights = {n: mxfp4_grid_weights(s, rng) for n, s in shapes.items()}
    weights.update({f"b{n}": (0.2 * rng.standard_normal(s[0])).astype(np.float32) for n, s in shapes.items()})
    weights["sinks"] = rng.standard_normal(HEADS).astype(np.float32)
    return weights


def transformers_attention(weights: dict, x: np.ndarray, sliding: bool) -> np.ndarray:
    """transformers' GptOssAttention (eager) on one sequence, with the causal (sliding) mask."""
    import transformers as tf
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding

    config = tf.GptOssConfig(hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                             head_dim=HEAD_DIM, num_hidden_layers=2, sliding_window=WINDOW,
                             rope_parameters=dict(ROPE), max_position_embeddings=131072)
    config._attn_implementation = "eager"
    layer = 0 if sliding else 1
    assert config.layer_types[layer] == ("sliding_attention" if sliding else "full_attention")
    attn = GptOssAttention(config, layer).eval()
    with torch.no_grad():
        for n in "qkvo":
            getattr(attn, f"{n}_proj").weight.copy_(torch.from_numpy(weights[n]))
            getattr(attn, f"{n}_proj").bias.copy_(torch.from_numpy(weights[f"b{n}"]))
        attn.sinks.copy_(torch.from_numpy(weights["sinks"]))
        hidden = torch.from_numpy(x)[None]
        positions = torch.arange(len(x))[None]
        cos, sin = GptOssRotaryEmbedding(config)(hidden, positions)
        q_pos, k_pos = np.arange(len(x))[:, None], np.arange(len(x))[None, :]
        visible = (k_pos <= q_pos) & ((k_pos > q_pos - WINDOW) if sliding else True)
        mask = torch.from_numpy(np.where(visible, 0.0, -np.inf).astype(np.float32))[None, None]
        out, _ = attn(hidden, (cos, sin), mask)
    return out[0].double().numpy()


def our_attention(backend, w: dict, x: np.ndarray, cache, start_pos: int, sliding: bool) -> np.ndarray:
    """The adapter's attention equations on backend ops, with MXFP4 projection weights `w`."""
    t = len(x)
    positions = np.arange(start_pos, start_pos + t)
    q = backend.matmul(x, w["q"], w["bq"]).reshape(t, HEADS, HEAD_DIM)
    k = backend.matmul(x, w["k"], w["bk"]).reshape(t, KV_HEADS, HEAD_DIM)
    v = backend.matmul(x, w["v"], w["bv"]).reshape(t, KV_HEADS, HEAD_DIM)
    q, k = backend.rope(q, positions, OUR_ROPE), backend.rope(k, positions, OUR_ROPE)
    out = backend.attention(q, k, v, cache, 0, start_pos, sliding_window=WINDOW if sliding else 0, sinks=w["sinks"])
    return backend.to_host(backend.matmul(out, w["o"], w["bo"]))


def quantized(backend, weights: dict) -> tuple[dict, dict]:
    """(our backend weights with Q/K/V/O in MXFP4, the same as gguf-py's float values)."""
    ours, dequantized = {}, dict(weights)
    for name, value in weights.items():
        if name in "qkvo":
            stored = mxfp4_tensor(value, f"attn_{name}.weight")
            ours[name], dequantized[name] = backend.load_weight(stored), gguf_dequantized(stored)
        else:
            ours[name] = backend.asarray(value)
    return ours, dequantized


X = np.random.default_rng(350).standard_normal((T, D)).astype(np.float32)


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding-window", "full"])
def test_prefill_equals_transformers_on_dequantized_weights(sliding):
    backend = NumpyBackend()
    ours_w, dequantized = quantized(backend, float_weights("gaussian"))
    ours = our_attention(backend, ours_w, X, backend.new_kv_cache(1, T, KV_HEADS, HEAD_DIM), 0, sliding)
    error = relative_error(ours, transformers_attention(dequantized, X, sliding))
    record(f"GT-035 attention vs transformers (dequantized), sliding={sliding}", relative_error=error)
    assert error < 1e-5


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding-window", "full"])
def test_decode_steps_through_the_cache_equal_transformers(sliding):
    """Prefill 5 tokens, then 7 one-token steps: past the window of 4."""
    backend = NumpyBackend()
    ours_w, dequantized = quantized(backend, float_weights("gaussian"))
    cache = backend.new_kv_cache(1, T, KV_HEADS, HEAD_DIM)
    rows = [our_attention(backend, ours_w, X[:5], cache, 0, sliding)]
    rows += [our_attention(backend, ours_w, X[t : t + 1], cache, t, sliding) for t in range(5, T)]
    error = relative_error(np.concatenate(rows), transformers_attention(dequantized, X, sliding))
    assert error < 1e-5


@pytest.mark.parametrize("kind", ["mxfp4-representable", "gaussian"])
def test_error_against_unquantized_float_weights(kind):
    backend = NumpyBackend()
    weights = float_weights("gaussian" if kind == "gaussian" else "grid")
    ours_w, _ = quantized(backend, weights)
    ours = our_attention(backend, ours_w, X, backend.new_kv_cache(1, T, KV_HEADS, HEAD_DIM), 0, True)
    error = relative_error(ours, transformers_attention(weights, X, True))
    record(f"GT-035 attention vs transformers (unquantized float weights), {kind}", relative_error=error)
    assert error < (1e-5 if kind == "mxfp4-representable" else 0.5)
