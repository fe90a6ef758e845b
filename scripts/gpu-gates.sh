#!/usr/bin/env bash
# The gate board (gates 1-4) on a GPU machine without network, with the data its fixtures need
# (docs/gpu.md, "The gate board on the GPU machine").
#
#   scripts/gpu-gates.sh pack [--with-qwen] [--chunk-mib 55]
#       here: writes .gpu-carry/c1, c2, ... (git-ignored, each at most 55 MiB) and prints the device
#       calls: what each carries and runs. --with-qwen adds the real Qwen2.5-Coder file (9 more calls).
#   scripts/gpu-gates.sh stage
#       there: moves the parts this call carried into /tmp/m0-gpu-stage and installs every item whose
#       parts are all in (sha256 checked): /tmp/site (packages), /tmp/m0-cache (M0_CACHE), tools.
#   scripts/gpu-gates.sh run [GATE...] [-- PYTEST_ARGS...]
#       there: python -m worker gates --device cuda [--gate GATE...] with what was staged; pytest-xdist
#       by default (-n $GATES_WORKERS --dist loadgroup, GATES_WORKERS=12) and a basetemp of its own.
#       Writes $OUT/gates-<gates>/ (gate-board.md/.json/.html, gates.log; OUT defaults to reports/gpu)
#       and prints the verdicts. GATES_DEADLINE seconds after `run` starts (default 530: a device call
#       ends at 600) pytest is interrupted and the board is written with what ran (the rest NOT RUN).
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
[ $# -gt 0 ] && shift
STAGE="${M0_GPU_STAGE:-/tmp/m0-gpu-stage}"

print_calls() {   # the device calls for the plan pack wrote
  python3 - "$@" <<'PY'
import json, pathlib
plan = json.load(open(".gpu-carry/plan.json"))
MIB = 1 << 20
wheel_bytes = sum(p.stat().st_size for d in (".whl", ".whl-test") for p in pathlib.Path(d).glob("*.whl"))
sizes = {c["index"]: c["bytes"] for c in plan["calls"]}
fits = lambda i: sizes[i] + wheel_bytes <= 58 * MIB   # a call: 64 MiB with the tracked tree (a few MiB)
calls = [c["index"] for c in plan["calls"]]
gate1 = plan["gate1_calls"]       # calls 1..gate1 carry what gate 1 needs; later ones what gates 2-4 need too
wheels = [".whl", ".whl-test"]
print("\nDevice calls (run tool), one right after the other: the machine keeps /tmp only while warm:")
def call(n, carry, command):
    print(f"  call {n}: carry {json.dumps(carry)}\n          command: {command}")
    return n
printed = []
stage = "bash scripts/gpu-gates.sh stage"
for i in calls:
    folder = [f".gpu-carry/c{i}"]
    runs = "1" if i == gate1 else "2 3 4" if i == calls[-1] else None
    if runs and fits(i):
        printed.append(call(len(printed) + 1, wheels + folder, f"{stage} && bash scripts/gpu-gates.sh run {runs}"))
    else:
        printed.append(call(len(printed) + 1, folder, stage))
        if runs:
            printed.append(call(len(printed) + 1, wheels, f"bash scripts/gpu-gates.sh run {runs}"))
if gate1 == calls[-1]:
    printed.append(call(len(printed) + 1, wheels, "bash scripts/gpu-gates.sh run 2 3 4"))
print("Each run call prints the verdicts; its board files come back under $OUT/gates-<gates>/.")
PY
}

case "$mode" in
  pack)
    PY="${PYTHON:-.venv/bin/python}"
    "$PY" scripts/gpu_carry.py pack "$@"
    status=$?
    print_calls
    exit $status
    ;;
  stage)
    python3 scripts/gpu_carry.py stage
    exit $?
    ;;
  run) ;;
  *) echo "usage: $0 pack [--with-qwen] | stage | run [GATE...] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
esac

# -- run --------------------------------------------------------------------------------------
gates=() pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; pytest_args=("$@"); break ;;
    [1-4]) gates+=("$1"); shift ;;
    *) echo "unknown gate '$1' (expected 1-4, then -- and pytest arguments)" >&2; exit 2 ;;
  esac
done
[ ${#gates[@]} -gt 0 ] || gates=(1 2 3 4)
label="gates-$(IFS=-; echo "${gates[*]}")"
OUT="${OUT:-reports/gpu}"
dest="$OUT/$label"
mkdir -p "$dest" reports
log="$dest/gates.log"

# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
install_wheels || { echo "wheel installation failed" | tee -a "$log"; exit 1; }
{
  echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
  echo "== staged data"; python3 scripts/gpu_carry.py status
} 2>&1 | tee -a "$log"
if [ -f "$STAGE/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$STAGE/env.sh"
else
  echo "nothing staged ($STAGE/env.sh missing): the data rows will fail or be NOT RUN" | tee -a "$log"
fi
smol_ready 2>&1 | tee -a "$log" || echo "SmolLM2 not available: its rows will fail or be NOT RUN" | tee -a "$log"
if [ -n "${M0_LLAMA_CPP_BIN:-}" ] && ldd "$M0_LLAMA_CPP_BIN/llama-tokenize" 2>&1 | grep -q "not found"; then
  echo "llama.cpp tools carried but not runnable here: $(ldd "$M0_LLAMA_CPP_BIN/llama-tokenize" | grep 'not found')" \
    | tee -a "$log"
  unset M0_LLAMA_CPP_BIN
fi
twin="${M0_QWEN_TWIN_GGUF:-}"
if [ -n "$twin" ] && [ ! -f "$twin" ] && [ -f "$STAGE/twin/qwen2.5.header.bin" ]; then
  python3 scripts/make_twin.py build "$STAGE/twin/qwen2.5.header.bin" "$(cat "$STAGE/twin/qwen2.5.size")" "$twin" \
    2>&1 | tee -a "$log" || unset M0_QWEN_TWIN_GGUF
fi
export M0_CACHE="${M0_CACHE:-/tmp/m0-cache}"
# Each xdist worker runs its own NumPy/PyTorch references: 12 workers (one of them the GPU's queue) x 2
# threads on 16 cores; no network there, so the Hugging Face libraries must not try it.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ ${#pytest_args[@]} -gt 0 ] || pytest_args=(-n "${GATES_WORKERS:-12}" --dist loadgroup)
# A basetemp of its own: pytest empties a given basetemp at the start, and the numbered folders under
# /tmp/pytest-of-<user> are left to other runs.
pytest_args+=(--basetemp "/tmp/m0-gates-basetemp-$label")
gate_opts=()
for g in "${gates[@]}"; do gate_opts+=(--gate "$g"); done

device="${GATES_DEVICE:-cuda}"   # cpu: the same run on the NumPy reference (to try this script without a GPU)
rm -f reports/gate-board.md reports/gate-board.json reports/gate-board.html   # no stale board if none is written
echo "== python -m worker gates --device $device ${gate_opts[*]} -- ${pytest_args[*]}" | tee -a "$log"
start=$(date +%s)
left=$(( ${GATES_DEADLINE:-530} - SECONDS ))   # SECONDS: since this script started (wheels, twin included)
[ "$left" -gt 30 ] || left=30
# A background job starts with SIGINT ignored (bash, without job control), and Python then never turns
# SIGINT into KeyboardInterrupt: restore the default before exec, so the deadline below can interrupt pytest.
python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  python3 -m worker gates --device "$device" "${gate_opts[@]}" -- "${pytest_args[@]}" >> "$log" 2>&1 &
runner=$!
(
  # Its sleeps end with it (the trap), so nothing outlives the run holding its output open.
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "$left" & sleeper=$!; wait "$sleeper"
  # SIGINT to pytest itself (the child of `worker gates`): it stops its workers and still writes the board.
  for child in $(pgrep -P "$runner"); do kill -INT "$child" 2>/dev/null; done
  echo "deadline of ${GATES_DEADLINE:-530} s reached: pytest interrupted, the board shows what ran" >> "$log"
  sleep 30 & sleeper=$!; wait "$sleeper"
  kill -TERM "$runner" 2>/dev/null
) </dev/null >/dev/null 2>&1 &
watchdog=$!
wait "$runner"
rc=$?
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
echo "gates exit status: $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$|deadline" "$log" | tail -5
cp reports/gate-board.md reports/gate-board.json reports/gate-board.html "$dest/" 2>/dev/null
# the CUDA conformance table and the 64-step greedy identities the kernel checks wrote during the run
cp reports/cuda_conformance.json reports/cuda_end_to_end.json "$dest/" 2>/dev/null
python3 - "$dest/gate-board.json" <<'PY' 2>&1 | tee -a "$log"
import json, sys
try:
    board = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no gate board was written")
print(f"\nGate board on {board['device']}: overall {board['overall']}")
for gate in board["gates"]:
    counts = ", ".join(f"{n} {k}" for k, n in gate["counts"].items())
    print(f"  Gate {gate['gate']} {gate['title']}: {gate['verdict']} ({counts})")
    for row in gate["rows"]:
        if row["status"] != "PASS":
            print(f"    {row['status']:8} {row['id']:20} {row['reason'][:150]}")
PY
exit $rc
