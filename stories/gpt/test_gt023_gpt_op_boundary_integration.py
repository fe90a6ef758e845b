"""GT-023 integration of the GPT adapters across the op boundary (plan: "FFI integration tests GPT").

The plan's story runs the GPT models through the Rust->C++ FFI. Ours: the GPT-2 and GPT-OSS
adapters (worker/models/gpt2.py, gpt_oss.py) run on a Backend, and the boundary is the Backend
interface (worker/backend/base.py). Every backend call of a load and a forward pass goes through
a recording proxy that exposes only the interface and checks each call:

  * the adapters touch nothing but the interface's methods (CPU: the NumPy backend);
  * on the CUDA backend no activation crosses the boundary as host float data: every float array
    handed to an op is a device array on our GPU, every array an op returns is one; host data
    enters only through `asarray` (e.g. GPT-OSS routing weights, computed on the host by design)
    and leaves only through `to_host` / `argmax`;
  * prefill followed by single-token decode steps gives, at every position, logits that agree
    with the same adapter on the NumPy reference and with transformers (GPT2LMHeadModel,
    GptOssForCausalLM holding the file's weights; the oracle), by NMSE;
  * the boundary's errors come through the adapters unchanged: GPT-2's learned positions bound
    its cache (PROMPT_TOO_LONG), a cache over the memory cap is VRAM_OOM.
"""
from __future__ import annotations

import numpy as np
import pytest

from stories.foundation._cuda_conformance import cuda_backend, nmse
from worker.backend.base import Backend
from worker.backend.numpy import NumpyBackend
from worker.errors import DeviceOOMError, PromptTooLongError

pytestmark = pytest.mark.exclusive_device  # measures or fills the whole device: alone under pytest-xdist

IDS = [15, 1034, 7, 49151, 0, 288, 288, 4096, 33, 12000, 5, 17]
PREFILL = 8                           # > 4 tokens (tiled product path); the rest decode one by one
INTERFACE = {name for name, member in vars(Backend).items() if callable(member) and not name.startswith("_")}
HOST_EXITS = {"to_host", "argmax"}    # results that are host arrays by contract
HOST_ENTRIES = {"asarray", "load_weight", "embedding", "rope"}   # may take host data (ids, positions)
HEADROOM = 256 << 10                  # cap = weights + this: 16 positions fit, a full context does not
LOGITS_NMSE = {"numpy": 1e-10, "cuda": 1e-5}      # CUDA: float16 KV cache (FT-012 uses 1e-5 too)


class BoundaryRecorder:
    """A Backend seen only through its interface; records and checks every call."""

    def __init__(self, backend, device_array_type=None):
        self._backend = backend
        self._device_array = device_array_type
        self.calls: list[str] = []
        self.name, self.device_name = backend.name, backend.device_name

    def __getattr__(self, name):
        if name not in INTERFACE:
            raise AttributeError(f"the adapter reached past the op boundary: backend.{name}")
        method = getattr(self._backend, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            if self._device_array is not None and name not in HOST_ENTRIES:
                for a in list(args) + list(kwargs.values()):
                    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                        raise AssertionError(f"{name} was handed host float data {a.shape}: an activation left the GPU")
            out = method(*args, **kwargs)
            if self._device_array is not None and name not in HOST_EXITS | {"load_weight", "new_kv_cache"} \
                    and out is not None and not isinstance(out, dict):
                # matmuls returns a list of products by contract (Backend.matmuls): each one is checked
                for part in out if isinstance(out, list) else [out]:
                    assert isinstance(part, self._device_array), \
                        f"{name} returned {type(part).__name__}, not a device array"
                    assert part.device.id == self._backend.device_index
            return out
        return call


def adapter_path(arch: str):
    if arch == "gpt-oss":
        from fixtures.tiny_gpt_oss import tiny_gpt_oss_path

        return tiny_gpt_oss_path()
    from fixtures.tiny_models import tiny_model_path

    return tiny_model_path("gpt2", "Q8_0")


def hf_logits(arch: str) -> np.ndarray:
    from fixtures.hf_reference import hf_logits as logits_of

    if arch == "gpt-oss":
        from fixtures.tiny_gpt_oss import tiny_gpt_oss_hf

        return logits_of(tiny_gpt_oss_hf("mxfp4"), IDS)
    from fixtures.tiny_models import tiny_hf_model

    return logits_of(tiny_hf_model("gpt2", "Q8_0"), IDS)


def load(arch: str, backend):
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    return load_model(GGUFModelFile.open(adapter_path(arch)), backend)


def prefill_then_decode(model) -> np.ndarray:
    b = model.backend
    cache = model.new_cache(len(IDS))
    try:
        rows = [b.to_host(model.forward(np.asarray(IDS[:PREFILL]), cache, 0, logits="all"))]
        for pos in range(PREFILL, len(IDS)):
            rows.append(b.to_host(model.forward(np.array([IDS[pos]]), cache, pos)))
        return np.concatenate(rows)
    finally:
        b.free_kv_cache(cache)


ARCHS = ["gpt2", "gpt-oss"]


@pytest.mark.story("GT-023")
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_uses_only_the_interface_and_matches_transformers(arch):
    recorder = BoundaryRecorder(NumpyBackend())
    model = load(arch, recorder)
    logits = prefill_then_decode(model)
    assert {"load_weight", "embedding", "matmul", "attention", "new_kv_cache", "free_kv_cache"} <= set(recorder.calls)
    assert ("layernorm" if arch == "gpt2" else "rmsnorm") in recorder.calls
    assert nmse(logits, hf_logits(arch)) <= LOGITS_NMSE["numpy"]


@pytest.mark.story("GT-023")
def test_gpt2_learned_positions_bound_the_cache_through_the_boundary():
    model = load("gpt2", BoundaryRecorder(NumpyBackend()))
    with pytest.raises(PromptTooLongError) as info:
        model.new_cache(model.config.context_length + 1)
    assert info.value.code == "PROMPT_TOO_LONG" and str(model.config.context_length) in info.value.message


@pytest.mark.gpu
@pytest.mark.story("GT-023")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_adapter_keeps_activations_on_the_device_and_matches(arch):
    import cupy

    recorder = BoundaryRecorder(cuda_backend(), device_array_type=cupy.ndarray)
    model = load(arch, recorder)
    ours = prefill_then_decode(model)
    reference = prefill_then_decode(load(arch, NumpyBackend()))
    theirs = hf_logits(arch)
    assert nmse(ours, reference) <= LOGITS_NMSE["cuda"], f"vs NumPy: {nmse(ours, reference):.2e}"
    assert nmse(ours, theirs) <= LOGITS_NMSE["cuda"], f"vs transformers: {nmse(ours, theirs):.2e}"
    assert {"attention", "matmul"} <= set(recorder.calls)
    if arch == "gpt-oss":
        # routing, the experts' SwiGLU and their weighted sum are one backend op (on the device); RoPE
        # is attention's rope= option, q/k/v one matmuls, the residual adds matmul_add
        assert {"mixture_of_experts", "matmuls", "matmul_add"} <= set(recorder.calls)
        assert "rope" not in recorder.calls
    else:
        assert {"layernorm", "gelu"} <= set(recorder.calls)


@pytest.mark.gpu
@pytest.mark.story("GT-023")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_adapter_cache_over_the_cap_is_vram_oom(arch):
    from worker.backend.cuda import CudaBackend
    from worker.memory_estimate import estimate_device_bytes

    cuda_backend()                                            # skips without a GPU
    weights = estimate_device_bytes(adapter_path(arch), 1)["weights"]
    b = CudaBackend(memory_limit_bytes=weights + HEADROOM)
    model = load(arch, b)
    cfg = model.config
    n_ctx = cfg.context_length if arch == "gpt2" else 1 << 20
    per_position = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    assert per_position * n_ctx > HEADROOM >= per_position * 16
    with pytest.raises(DeviceOOMError) as info:
        model.new_cache(n_ctx)
    assert info.value.code == "VRAM_OOM" and info.value.required_bytes == per_position * n_ctx
    cache = model.new_cache(16)                               # a small request still fits
    model.forward(np.asarray(IDS[:4]), cache, 0)
    b.free_kv_cache(cache)
