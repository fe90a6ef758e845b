"""GT-024 GPT weight mapping: llama.cpp's GPT-2 tensor names onto the adapter, any quant format.

Acceptance: the adapter consumes exactly the file's tensors, each a name gguf-py defines for
the GPT2 architecture (token/position embeddings, fused attn_qkv with bias, LayerNorm weight
and bias, ffn_up/down with bias, output); the fused QKV is split in Q, K, V of hidden rows each,
in that order (checked by the split weights' dequantized rows against gguf-py's); 1-D tensors
and position embeddings stay F32 in quantized files while matrices keep their stored format.
"""
import gguf
import numpy as np
import pytest

from fixtures.tiny_models import gguf_py_reader, tiny_worker_model


def gpt2_names(n_layers):
    names = set()
    for tensor in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2]:
        template = gguf.TENSOR_NAMES[tensor]
        for suffix in (".weight", ".bias"):
            if "{bid}" in template:
                names |= {template.format(bid=i) + suffix for i in range(n_layers)}
            else:
                names |= {template + suffix}
    return names


@pytest.mark.story("GT-024")
@pytest.mark.parametrize("qtype", ["F32", "Q4_K", "Q6_K"])
def test_every_gpt2_tensor_is_mapped(qtype):
    model = tiny_worker_model("gpt2", qtype)
    reader = gguf_py_reader("gpt2", qtype)
    stored = {t.name: t for t in reader.tensors}
    assert set(model.tensor_names) == set(stored)
    assert set(stored) <= gpt2_names(model.config.n_layers)
    for name, t in stored.items():
        quantized = t.n_elements > 1 and len(t.shape) == 2 and not name.startswith("position")
        expected = gguf.GGMLQuantizationType[qtype] if quantized else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == expected, name


@pytest.mark.story("GT-024")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_fused_qkv_splits_in_q_k_v_order(qtype):
    model = tiny_worker_model("gpt2", qtype)
    D = model.config.hidden_size
    reader = gguf_py_reader("gpt2", qtype)
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    fused = gguf.quants.dequantize(t.data, t.tensor_type).reshape(3 * D, D)
    identity = np.eye(D, dtype=np.float32)
    blk = model.blocks[0]
    for i, part in enumerate((blk.wq, blk.wk, blk.wv)):     # x = I recovers W.T
        rows = model.backend.to_host(model.backend.matmul(identity, part)).T
        np.testing.assert_array_equal(rows, fused[i * D:(i + 1) * D])
