"""Model adapters, one per family, found by the GGUF `general.architecture`.

    model = load_model(gguf_file, backend, progress=None)
    model.config, model.backend
    cache = model.new_cache(n_ctx)
    logits = model.forward(ids, cache, start_pos)     # [1, vocab] backend array: the last token's
    logits = model.forward(ids, cache, start_pos, logits="all")     # [T, vocab]: every token's

Adapters are imported only when asked for, so that a broken or missing optional adapter
(e.g. GPT-OSS) does not stop the others from loading.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from worker.errors import UnsupportedModelError

# GGUF general.architecture -> (module, adapter class)
_ADAPTERS: dict[str, tuple[str, str]] = {
    "llama": ("worker.models.llama", "LlamaModel"),
    "qwen2": ("worker.models.llama", "LlamaModel"),
    "phi3": ("worker.models.llama", "LlamaModel"),
    "gpt2": ("worker.models.gpt2", "GPT2Model"),
    "gpt-oss": ("worker.models.gpt_oss", "GptOssModel"),
}


def supported_architectures() -> list[str]:
    return sorted(_ADAPTERS)


def model_class(architecture: str) -> type:
    """The adapter class for a GGUF architecture; UnsupportedModelError if there is none."""
    if architecture not in _ADAPTERS:
        raise UnsupportedModelError(
            f"unsupported model architecture {architecture!r}; supported: "
            f"{', '.join(supported_architectures())}"
        )
    module_name, class_name = _ADAPTERS[architecture]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"the {architecture!r} adapter ({module_name}) is not available: {exc}"
        ) from exc
    return getattr(module, class_name)


def load_model(gguf_file, backend, progress=None):
    """Build the adapter for `gguf_file` (a worker.gguf.GGUFModelFile or a path) on `backend`
    (a Backend or a device string such as "cpu"), loading its weights."""
    if isinstance(gguf_file, (str, Path)):
        from worker.gguf import GGUFModelFile

        gguf_file = GGUFModelFile.open(gguf_file)
    if isinstance(backend, str):
        from worker.backend import get_backend

        backend = get_backend(backend)
    cls = model_class(gguf_file.config.architecture)
    return cls(gguf_file, backend, progress=progress)
