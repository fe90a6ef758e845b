"""GT-043 MXFP4 regression tests: the ways an MXFP4 / GPT-OSS path goes wrong, pinned.

- element order inside a block (low nibbles are elements 0-15, high nibbles 16-31);
- expert slicing of stacked [E, N, K] tensors, including after the reference backend's
  per-expert cache evicts (more than 8 experts), and per-expert biases;
- llama.cpp's newer fused `ffn_gate_up_exps` layout ([gate; up] rows per expert, bias likewise)
  runs to the same logits as the separate gate/up tensors;
- the clamped SwiGLU at and beyond the clamp (±7) equals transformers' GptOssExperts gate;
- weights stay in their stored MXFP4 bytes through a forward pass (memory accounted as stored).
Oracles: gguf-py's dequantization, transformers' GPT-OSS code.
"""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stories.gpt._mxfp4_helpers import MXFP4, gguf_dequantized, mxfp4_grid_weights, mxfp4_tensor, tiny_worker_gpt_oss
from worker.backend.numpy import NumpyBackend
from worker.gguf import GGUFModelFile
from worker.quant import QuantTensor

pytestmark = pytest.mark.story("GT-043")


@pytest.mark.parametrize("position", [0, 1, 15, 16, 17, 31])
def test_block_element_order_in_a_matmul(position):
    codes = np.zeros(32, np.uint8)
    codes[position] = 2                                       # E2M1 code 2 = 1.0
    block = np.concatenate([[127], codes[:16] | (codes[16:] << 4)]).astype(np.uint8)
    stored = QuantTensor("w", MXFP4, (1, 32), block)
    x = np.arange(1, 33, dtype=np.float32)[None]
    backend = NumpyBackend()
    y = backend.matmul(x, backend.load_weight(stored))
    assert y[0, 0] == x[0, position] == (x @ gguf_dequantized(stored).T)[0, 0]


def test_expert_slices_survive_cache_eviction():
    n_experts = 12
    rng = np.random.default_rng(43)
    w = np.stack([mxfp4_grid_weights((16, 64), rng) * np.float32(2.0**e) for e in range(n_experts)])  # distinct, exact
    bias = rng.standard_normal((n_experts, 16)).astype(np.float32)
    stored = mxfp4_tensor(w)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    backend = NumpyBackend()
    weight, b = backend.load_weight(stored), backend.asarray(bias)
    for e in list(range(n_experts)) * 2 + [0, 11, 5]:
        x64, w64 = x.astype(np.float64), w[e].astype(np.float64)
        error = np.abs(backend.matmul(x, weight, b, expert=e) - (x64 @ w64.T + bias[e]))
        assert (error <= 1e-5 * (np.abs(x64) @ np.abs(w64).T + np.abs(bias[e]))).all(), f"expert {e}"


def _fused_view(gf):
    """The tiny file as llama.cpp's fuse_gate_up_exps option writes it: per expert, the gate rows
    then the up rows of one tensor [E, 2F, K] (and bias [E, 2F])."""
    tensors, fused = dict(gf.tensors), {}
    for layer in range(gf.config.n_layers):
        for suffix in ("weight", "bias"):
            gate_name, up_name = f"blk.{layer}.ffn_gate_exps.{suffix}", f"blk.{layer}.ffn_up_exps.{suffix}"
            gate, up = gf.tensor(gate_name), gf.tensor(up_name)
            n_experts = gate.shape[0]
            raw = np.concatenate([np.asarray(gate.raw).reshape(n_experts, gate.shape[1], -1),
                                  np.asarray(up.raw).reshape(n_experts, up.shape[1], -1)], axis=1).reshape(-1)
            name = f"blk.{layer}.ffn_gate_up_exps.{suffix}"
            shape = (n_experts, 2 * gate.shape[1], *gate.shape[2:])
            fused[name] = QuantTensor(name, gate.qtype, shape, raw)
            del tensors[up_name]
            tensors[name] = dataclasses.replace(tensors.pop(gate_name), name=name, shape=shape, nbytes=raw.nbytes)
    return SimpleNamespace(config=gf.config, tensors=tensors, path=gf.path,
                           tensor=lambda name: fused[name] if name in fused else gf.tensor(name))


def test_fused_gate_up_experts_give_the_same_logits():
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
    from worker.models.gpt_oss import GptOssModel

    ids = np.random.default_rng(430).integers(0, 49152, 12)
    separate = tiny_worker_gpt_oss()
    with GGUFModelFile.open(tiny_gpt_oss_path()) as gf:
        fused = GptOssModel(_fused_view(gf), NumpyBackend())
        assert "blk.0.ffn_gate_up_exps.weight" in fused.tensor_names
        a = separate.forward(ids, separate.new_cache(len(ids)), 0, logits="all")
        b = fused.forward(ids, fused.new_cache(len(ids)), 0, logits="all")
    np.testing.assert_array_equal(a, b)


def test_clamped_swiglu_matches_transformers_at_the_clamp():
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_hf

    experts = tiny_gpt_oss_hf().model.layers[0].mlp.experts
    edge = np.array([-1e4, -8.0, -7.0, -6.999, -1.0, 0.0, 1.0, 6.999, 7.0, 7.001, 8.0, 1e4], np.float32)
    gate, up = np.meshgrid(edge, edge)
    gate, up = gate.reshape(1, -1), up.reshape(1, -1)
    interleaved = np.empty((1, 2 * gate.size), np.float32)
    interleaved[:, 0::2], interleaved[:, 1::2] = gate, up
    with torch.no_grad():
        reference = experts._apply_gate(torch.from_numpy(interleaved)).double().numpy()
    model = tiny_worker_gpt_oss()
    ours = model.backend.swiglu(gate, up, limit=model.swiglu_limit, alpha=model.swiglu_alpha)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_weights_stay_stored_as_mxfp4_through_a_forward_pass():
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
    from worker.models import load_model

    backend = NumpyBackend()
    with GGUFModelFile.open(tiny_gpt_oss_path()) as gf:
        model = load_model(gf, backend)
        model.forward(np.arange(8), model.new_cache(8), 0)
        stored = sum(info.nbytes for info in gf.tensors.values())
        experts = [info for info in gf.tensors.values() if info.qtype == MXFP4]
        assert len(experts) == 3 * gf.config.n_layers
        assert all(info.nbytes == np.prod(info.shape) // 32 * 17 for info in experts)
    # The backend holds the stored MXFP4 bytes unchanged; the NumPy reference's float32 copies
    # are counted beside them (host memory, --max-memory on the CPU), never in their place.
    assert sum(w.nbytes for w in backend._weights) == stored
    copies = sum(w.float32_bytes for w in backend._weights)
    assert backend.memory_report()["weights"] == stored + copies
