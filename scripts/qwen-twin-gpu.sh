#!/usr/bin/env bash
# CUDA-vs-NumPy greedy identity on the real Qwen2.5 file's layout, on a GPU machine the real file
# cannot reach: carry only its header (metadata, vocabulary, tensor table; ~6 MB).
#
#   scripts/qwen-twin-gpu.sh cut    # here: cut the "qwen2.5" file's header into .cache/twin/
#   scripts/qwen-twin-gpu.sh run    # there (carry .cache/twin): build the twin (same tensor table,
#                                   # random weights) and run FT-012's 64-step greedy check on it
# Writes reports/cuda_end_to_end.json (row "qwen2.5-real-layout-twin"), copied to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
header=.cache/twin/qwen2.5.header.bin
case "${1:-}" in
  cut)
    mkdir -p .cache/twin
    real=$(.venv/bin/python -c 'from fixtures.paths import user_model; print(user_model("M0_QWEN25_GGUF") or "")')
    [ -n "$real" ] || { echo "no qwen2.5 file: set M0_QWEN25_GGUF or run scripts/bootstrap.sh" >&2; exit 1; }
    .venv/bin/python scripts/make_twin.py header "$real" "$header" > .cache/twin/qwen2.5.size
    echo "$header ($(stat -c %s "$header") bytes), real size $(cat .cache/twin/qwen2.5.size)"
    ;;
  run)
    PY=${PYTHON:-python3}
    if ls .whl/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:$PWD"
    fi
    twin=/tmp/qwen2.5-twin.gguf
    "$PY" scripts/make_twin.py build "$header" "$(cat .cache/twin/qwen2.5.size)" "$twin"
    status=0
    M0_QWEN_TWIN_GGUF=$twin "$PY" -m pytest stories/foundation/test_ft012_cuda_end_to_end.py \
      -k qwen25_layout_twin --device cuda -p no:cacheprovider -q -s || status=$?
    if [ -n "${OUT:-}" ]; then cp reports/cuda_end_to_end.json "$OUT/" || true; fi
    exit $status
    ;;
  *) sed -n 2,8p "$0"; exit 2 ;;
esac
