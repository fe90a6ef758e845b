"""Every reason a GGUF file is refused: one stable code each (documented in docs/gguf.md).

GGUF_* codes are raised as worker.errors.GGUFError; the last three as UnsupportedModelError
(a well-formed file for a model this worker does not run).
"""
from __future__ import annotations

GGUF_CODES: dict[str, str] = {
    "GGUF_INVALID": "GGUFError's default code; the reader itself always raises one of the specific codes below",
    "GGUF_UNREADABLE": "the path does not exist, is not a regular file, or cannot be opened",
    "GGUF_BAD_MAGIC": "the file does not start with the bytes 'GGUF' (not a GGUF file)",
    "GGUF_UNSUPPORTED_VERSION": ("GGUF version other than 2 or 3 (v1 used 32-bit counts; big-endian files read as a"
                                 " huge version)"),
    "GGUF_TRUNCATED": "the file ends before its header, metadata, tensor table or tensor data does",
    "GGUF_ABSURD_COUNT": "a tensor, metadata or array count, or a string length, beyond any sane limit",
    "GGUF_ABSURD_DIMENSIONS": "a tensor with 0 or more than 4 dimensions, a zero-sized dimension, or too many elements",
    "GGUF_BAD_VALUE_TYPE": "a metadata value type id that GGUF does not define, or an array of arrays",
    "GGUF_BAD_STRING": "a key, value or tensor name that is empty where it must not be, or not valid UTF-8",
    "GGUF_BAD_METADATA": "a known metadata key with the wrong type or an out-of-range value",
    "GGUF_DUPLICATE_KEY": "the same metadata key twice",
    "GGUF_DUPLICATE_TENSOR": "the same tensor name twice",
    "GGUF_UNKNOWN_TENSOR_TYPE": "a tensor type id that ggml does not define",
    "GGUF_UNSUPPORTED_TENSOR_TYPE": ("a ggml tensor type outside the worker's format registry"
                                     " (worker/quant/formats.py), e.g. Q8_K or NVFP4"),
    "GGUF_TENSOR_SIZE_MISMATCH": ("a tensor's rows are not a whole number of quant blocks, so shape and type give no"
                                  " valid byte size"),
    "GGUF_MISALIGNED": "a tensor's data offset is not a multiple of general.alignment",
    "GGUF_TENSORS_OVERLAP": "two tensors' byte ranges overlap",
    "GGUF_TENSOR_OUT_OF_BOUNDS": ("a tensor's data lies (partly) beyond the end of the file, away from where the"
                                  " file's own layout ends"),
    "GGUF_MISSING_METADATA": "a metadata key the architecture requires is absent",
    "GGUF_INCONSISTENT_CONFIG": ("metadata values that contradict each other or the tensors (heads not dividing, vocab"
                                 " size vs embedding rows, ...)"),
}

UNSUPPORTED_CODES: dict[str, str] = {
    "UNSUPPORTED_ARCHITECTURE": "general.architecture names an architecture outside llama, qwen2, phi3, gpt2, gpt-oss",
    "UNSUPPORTED_ROPE_SCALING": "a RoPE scaling type other than none, linear or yarn (e.g. longrope)",
    "UNSUPPORTED_MODEL": ("a feature of an otherwise supported architecture that this worker does not run (MoE in"
                          " llama, per-layer head counts, ...)"),
}

ALL_CODES = {**GGUF_CODES, **UNSUPPORTED_CODES}
