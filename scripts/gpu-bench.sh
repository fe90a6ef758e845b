#!/usr/bin/env bash
# Our worker beside llama.cpp (llama-bench) on the GPU machine, same GPU, same files, one call.
#
#   scripts/gpu-bench.sh prepare   here: llama.cpp's source (from the llama-cpp-python sdist) into
#                                  .peer/llama.cpp, the real files' headers into .peer/twins (timing
#                                  twins: real tensor tables, random weights) and .peer/commit.txt
#   scripts/gpu-bench.sh build     there, optional: start llama-bench's build early (detached), so
#                                  that other work can run beside it before `run`
#   scripts/gpu-bench.sh run       there (carry .peer, or its packed .peer/*.tar.xz with
#                                  .peer/*.txt, and .whl): builds llama-bench (CUDA, sm_90) in
#                                  the background while the models are written and ours is measured,
#                                  then runs llama-bench on the same files and writes the table
#
# Models: SmolLM2-135M Q4_1 and Qwen2.5-Coder-0.5B Q4_K_M as timing twins of the real files
# (scripts/make_twin.py), and a GPT-OSS-20B-shaped MXFP4 model written there
# (benchmarks/bench_vs_llama_cpp.py write-gpt-oss; BENCH_MODELS="smollm2 qwen2.5" skips it).
# BENCH_LLAMA_CPP=0 measures ours only (no build, no llama-bench).
# Writes under $OUT (default reports/gpu): bench_vs_llama_cpp.json (also reports/), ours.json, precompile.log,
# peer.json, llama_build.log, bench.log. Exit status non-zero if a step failed.
set -uo pipefail
mode="${1:-run}"
OUT="${OUT:-reports/gpu}"
PEER="${PEER:-.peer}"
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}

prepare() {
  set -e
  mkdir -p "$PEER/twins"
  if [ ! -f "$PEER/llama.cpp/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    sdist=$(ls .cache/llama-cpp-sdist/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz 2>/dev/null || true)
    if [ -z "$sdist" ]; then
      python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
      sdist=$(ls "$tmp"/llama_cpp_python-*.tar.gz)
    fi
    tar xzf "$sdist" -C "$tmp"
    src=$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)
    mkdir -p "$PEER/llama.cpp"
    # stripped to what the CUDA build of llama-bench needs (about 32 MiB)
    (cd "$src" && tar cf - --exclude=./models --exclude=./docs --exclude=./media --exclude=./benches \
       --exclude=./tools/ui --exclude=./tests --exclude=./gguf-py --exclude=./examples --exclude=./conversion \
       --exclude=./ggml/src/ggml-et --exclude=./ggml/src/ggml-metal --exclude=./ggml/src/ggml-hexagon \
       --exclude=./ggml/src/ggml-sycl --exclude=./ggml/src/ggml-vulkan --exclude=./ggml/src/ggml-opencl .) \
      | (cd "$PEER/llama.cpp" && tar xf -)
    rm -rf "$tmp"
    echo "llama.cpp vendored in llama-cpp-python $LLAMA_CPP_PYTHON_VERSION" > "$PEER/llama_cpp_version.txt"
  fi
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
  smol=$($py -c "from fixtures.paths import smollm2_path; print(smollm2_path() or '')")
  qwen=$($py -c "from fixtures.paths import qwen25_coder_path; print(qwen25_coder_path() or '')")
  [ -n "$smol" ] && $py scripts/make_twin.py header "$smol" "$PEER/twins/smollm2.header" > "$PEER/twins/smollm2.size"
  [ -n "$qwen" ] && $py scripts/make_twin.py header "$qwen" "$PEER/twins/qwen2.5.header" > "$PEER/twins/qwen2.5.size"
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- worker benchmarks || echo '+uncommitted')" \
    > "$PEER/commit.txt"
  # packed copies to carry (about 6 MiB instead of 40), so that a model's part fits beside them
  tar cJf "$PEER/llama.cpp.tar.xz" -C "$PEER" llama.cpp
  tar cJf "$PEER/twins.tar.xz" -C "$PEER" twins
  du -sh "$PEER"; ls -l "$PEER" "$PEER/twins"; cat "$PEER/commit.txt"
}

# .peer carried packed (llama.cpp.tar.xz, twins.tar.xz): unpacked there once
unpack_peer() {
  for part in llama.cpp twins; do
    if [ ! -e "$PEER/$part" ] && [ -f "$PEER/$part.tar.xz" ]; then tar xJf "$PEER/$part.tar.xz" -C "$PEER" || return 1; fi
  done
}

# llama-bench's CUDA build, detached (about 4 minutes there): /tmp/llb.rc holds its exit status when done
start_build() {
  mkdir -p "$OUT"
  rm -f /tmp/llb.rc
  touch /tmp/llb.started
  setsid nohup nice -n 19 bash -c "cmake -S $PEER/llama.cpp -B /tmp/llb -G Ninja -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF && cmake --build /tmp/llb --target llama-bench -j $(nproc); \
    echo \$? > /tmp/llb.rc" > "$OUT/llama_build.log" 2>&1 < /dev/null &
}

# seconds left before the whole run must be done (the device tool stops a command at 600 s), less a reserve
left() { local l=$(( ${BENCH_DEADLINE_S:-570} - SECONDS - $1 )); [ $l -gt 10 ] && echo $l || echo 10; }
cap() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }

run() {
  mkdir -p "$OUT" reports /tmp/models
  unpack_peer
  log="$OUT/bench.log"
  status=0
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
  fi
  # the commit recorded by `prepare` here: the GPU machine's copy of .git need not be current
  commit=$(cat "$PEER/commit.txt" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 M0_COMMIT="$commit"
  { echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader;
    date -u; } 2>&1 | tee -a "$log"

  # 1. llama-bench: configure and build in the background while the model files are written
  #    (or already building: `scripts/gpu-bench.sh build` started it earlier in this machine's life)
  lb=/tmp/llb/bin/llama-bench
  building=0
  if [ "${BENCH_LLAMA_CPP:-1}" = 0 ]; then
    echo "BENCH_LLAMA_CPP=0: ours only" | tee -a "$log"
  elif [ -f /tmp/llb.started ]; then
    building=1
  elif [ -f "$PEER/llama.cpp/CMakeLists.txt" ]; then
    building=1
    start_build
  else
    echo "no llama.cpp source in $PEER (run scripts/gpu-bench.sh prepare): llama.cpp NOT RUN" | tee -a "$log"
  fi

  # our kernel modules compiled into CuPy's disk cache meanwhile, a process each (NVRTC is single-threaded), so
  # that the measuring step below loads them instead of compiling them on its first launches
  precompile=()
  for module in $(python3 -c "from worker.backend.cuda_runtime import kernel_modules; print(*kernel_modules())"); do
    timeout 300 python3 -c "from worker.backend.cuda_runtime import compile_module; compile_module('$module')" \
      >> "$OUT/precompile.log" 2>&1 &
    precompile+=($!)
  done

  # 2. the model files
  models=()
  for m in ${BENCH_MODELS:-smollm2 qwen2.5 gpt-oss-20b}; do
    case "$m" in
      smollm2|qwen2.5)
        if [ -f "$PEER/twins/$m.header" ]; then
          python3 scripts/make_twin.py build "$PEER/twins/$m.header" "$(cat $PEER/twins/$m.size)" "/tmp/models/$m.gguf" \
            && models+=("$m=/tmp/models/$m.gguf") || status=1
        else
          echo "$m: no header in $PEER/twins: NOT RUN" | tee -a "$log"
        fi ;;
      gpt-oss-20b)
        tok=/tmp/models/smollm2.gguf
        [ -f "$tok" ] || python3 scripts/make_twin.py build "$PEER/twins/smollm2.header" "$(cat $PEER/twins/smollm2.size)" "$tok"
        # written once a machine (seed 0: the same file each time); a later run on the warm machine reuses it
        if [ -f /tmp/models/gpt-oss-20b.gguf.done ]; then
          echo "gpt-oss-20b: reusing /tmp/models/gpt-oss-20b.gguf" | tee -a "$log"
          models+=("gpt-oss-20b=/tmp/models/gpt-oss-20b.gguf")
        else
          timeout "$(cap 150 "$(left 300)")" python3 benchmarks/bench_vs_llama_cpp.py write-gpt-oss \
            /tmp/models/gpt-oss-20b.gguf --tokenizer-from "$tok" 2>&1 | tee -a "$log" \
            && touch /tmp/models/gpt-oss-20b.gguf.done && models+=("gpt-oss-20b=/tmp/models/gpt-oss-20b.gguf") || status=1
        fi ;;
    esac
  done
  margs=(); for m in "${models[@]}"; do margs+=(--model "$m"); done

  # 3. ours, once the build no longer competes for the CPU (our prefill is host-bound: a compiler
  #    beside it would slow our figures); ours takes well under a minute, so it waits for the build
  #    as long as that leaves it and llama-bench their time
  wait_build() { while [ $building = 1 ] && [ ! -f /tmp/llb.rc ] && [ "$(left "$1")" -gt 10 ]; do sleep 1; done; }
  for pid in "${precompile[@]}"; do wait "$pid" || echo "a kernel module did not precompile (precompile.log)" | tee -a "$log"; done
  echo "kernel modules compiled at ${SECONDS}s" | tee -a "$log"
  wait_build 220
  state=$([ $building = 0 ] && echo 'not built' || { [ -f /tmp/llb.rc ] && echo done || echo 'still running'; })
  echo "== ours (llama.cpp build: $state) at ${SECONDS}s" | tee -a "$log"
  timeout "$(cap 240 "$(left 100)")" python3 benchmarks/bench_vs_llama_cpp.py ours "${margs[@]}" --repeats "${REPEATS:-3}" \
    --out "$OUT/ours.json" 2>&1 | tee -a "$log" || status=1

  # 4. llama.cpp, once its build is done
  wait_build 90
  if [ $building = 1 ]; then
    echo "llama-bench build: exit $(cat /tmp/llb.rc 2>/dev/null || echo 'not finished') at ${SECONDS}s" | tee -a "$log"
    tail -3 "$OUT/llama_build.log" | tee -a "$log"
  fi
  if [ -x "$lb" ]; then
    echo "== llama-bench" | tee -a "$log"
    timeout "$(cap 200 "$(left 15)")" python3 benchmarks/bench_vs_llama_cpp.py peer --llama-bench "$lb" "${margs[@]}" \
      --repeats "${REPEATS:-3}" --out "$OUT/peer.json" 2>&1 | tee -a "$log" || status=1
  else
    echo "llama-bench not built (see llama_build.log): llama.cpp NOT RUN" | tee -a "$log"; status=1
    echo '{"tool": "peer", "rows": []}' > "$OUT/peer.json"
  fi

  # 5. the table
  [ -f "$OUT/ours.json" ] || echo '{"tool": "ours", "rows": []}' > "$OUT/ours.json"
  meta=$(python3 - "$PEER" <<'PY'
import json, subprocess, sys, pathlib
peer = pathlib.Path(sys.argv[1])
meta = {"llama_cpp_build": "CUDA, sm_90, flash attention on (-fa 1), -ngl 99",
        "models": {"smollm2": "SmolLM2-135M-Instruct Q4_1: timing twin (the real header and tensor table, "
                              "random weights)",
                   "qwen2.5": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: timing twin (the real header and tensor "
                              "table, random weights)",
                   "gpt-oss-20b": "GPT-OSS-20B shape, MXFP4 experts, Q8_0 matrices, F32 vectors, SmolLM2's "
                                  "49,152-token vocabulary, random weights"}}
try:
    meta["device"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
    import cupy
    meta.update(cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:  # noqa: BLE001 — the table is still written, without these fields
    meta["meta_error"] = repr(exc)
version = peer / "llama_cpp_version.txt"
meta["llama_cpp"] = version.read_text().strip() if version.exists() else "?"
print(json.dumps(meta))
PY
)
  python3 benchmarks/bench_vs_llama_cpp.py table "$OUT/ours.json" "$OUT/peer.json" --meta "$meta" \
    --out "$OUT/bench_vs_llama_cpp.json" 2>&1 | tee -a "$log" || status=1
  cp "$OUT/bench_vs_llama_cpp.json" reports/ 2>/dev/null
  echo "gpu-bench status: $status" | tee -a "$log"
  return $status
}

case "$mode" in
  prepare) prepare ;;
  unpack) unpack_peer ;;
  build) unpack_peer && start_build ;;
  run) run ;;
  *) echo "usage: scripts/gpu-bench.sh prepare|run|unpack|build" >&2; exit 2 ;;
esac
