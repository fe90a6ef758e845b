#!/usr/bin/env bash
# Validate the llama.cpp worker (tools/llama_cpp_worker) the way a third party validates its own:
# start it, run gates against it with --worker-url, stop it (docs/third-party-workers.md).
#
#   scripts/llama-cpp-worker-gates.sh [smollm2|qwen2.5|FILE.gguf] [pytest arguments, default gates/gate1]
#
# llama-server is built once by fixtures/llama_cpp.py and cached under .cache/llama.cpp; where it
# cannot be built the run is skipped with the reason (exit 0). Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
model="${1:-smollm2}"
shift || true
case "$model" in
  smollm2) model=$($py -c "from fixtures.paths import smollm2_path; print(smollm2_path() or '')") ;;
  qwen2.5) model=$($py -c "from fixtures.paths import user_model; print(user_model('M0_QWEN25_GGUF') or '')") ;;
esac
if [ ! -f "$model" ]; then
  echo "no model file: '$model'" >&2
  exit 2
fi
if ! server=$($py -c "from fixtures.llama_cpp import binary; print(binary('llama-server'))"); then
  echo "SKIPPED: llama.cpp's llama-server cannot be built here (see the message above)"
  exit 0
fi
log=$(mktemp)
$py -m tools.llama_cpp_worker --model "$model" --port 0 --llama-server "$server" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 300); do
  url=$(sed -n 's/.*"event": "listening".*"url": "\([^"]*\)".*/\1/p' "$log" | head -1)
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$url" ] || { echo "the llama.cpp worker did not start listening" >&2; exit 1; }
echo "llama.cpp worker on $(basename "$model") at $url"
if [ $# -eq 0 ]; then set -- gates/gate1; fi
status=0
$py -m pytest "$@" --worker-url "$url" -p no:cacheprovider || status=$?
exit "$status"
