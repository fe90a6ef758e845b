#!/usr/bin/env bash
# Per-kernel GPU time of a decode step and of prefills (Nsight Compute), on the GPU machine.
#
#   scripts/gpu-profile.sh      (carry .peer and .whl; scripts/gpu-bench.sh prepare writes .peer)
#
# Builds the timing twins of the real files (scripts/make_twin.py) and, for each model and step,
# runs benchmarks/profile_gpu.py under ncu; writes $OUT/profile-<model>-<step>.json (wall time,
# kernel count, kernel time by kernel). PROFILE_STEPS and PROFILE_MODELS choose what runs;
# NCU_FLAGS adds ncu options (e.g. "--cache-control none --clock-control none" for warm caches and
# boost clocks, the conditions of a real step; ncu's default flushes caches and locks base clocks).
set -uo pipefail
OUT="${OUT:-reports/gpu}"
PEER="${PEER:-.peer}"
mkdir -p "$OUT" /tmp/models /tmp/ncu
bash scripts/gpu-bench.sh unpack || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
for m in ${PROFILE_MODELS:-smollm2 qwen2.5}; do
  [ -f "/tmp/models/$m.gguf" ] || python3 scripts/make_twin.py build "$PEER/twins/$m.header" "$(cat $PEER/twins/$m.size)" \
    "/tmp/models/$m.gguf" || exit 1
  for what in ${PROFILE_STEPS:-decode prefill128 prefill512 prefill2048}; do
    csv="/tmp/ncu/$m-$what.csv"
    line=$(timeout 240 ncu ${NCU_FLAGS:-} --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file "$csv" \
      python3 benchmarks/profile_gpu.py run "/tmp/models/$m.gguf" --what "$what" 2>&1 | grep '^{' | tail -1)
    summary=$(python3 benchmarks/profile_gpu.py summarize "$csv" --top 30)
    echo "{\"run\": ${line:-null}, \"profile\": $summary}" > "$OUT/profile-$m-$what${PROFILE_TAG:-}.json"
    echo "== $m $what: $line"; echo "$summary" | head -40
  done
done
