#!/usr/bin/env bash
# The gate board (gates 1-4) on a GPU machine without network, with the data its fixtures need
# (docs/gpu.md, "The gate board on the GPU machine").
#
#   scripts/gpu-gates.sh pack [--with-qwen] [--chunk-mib 55]
#       here: writes .gpu-carry/c1, c2, ... (git-ignored, each at most 55 MiB) and prints the device
#       calls: what each carries and runs. --with-qwen adds the real Qwen2.5-Coder file (9 more calls).
#   scripts/gpu-gates.sh stage
#       there: moves the parts this call carried into /tmp/m0-gpu-stage and installs every item whose
#       parts are all in (sha256 checked): /tmp/site (packages; the oracle wheels pip-installed there),
#       /tmp/m0-cache (M0_CACHE), tools.
#   scripts/gpu-gates.sh run [GATE...] [--shard I/N] [-- PYTEST_ARGS...]
#       there: python -m worker gates --device cuda [--gate GATE...] with what was staged; pytest-xdist
#       by default (-n $GATES_WORKERS --dist loadgroup, GATES_WORKERS=12) and a basetemp of its own.
#       Writes $OUT/gates-<gates>/ (gate-board.md/.json/.html, gate-results.json, gates.log; OUT defaults
#       to reports/gpu) and prints the verdicts. GATES_DEADLINE seconds after `run` starts (default 530:
#       a device call ends at 600) pytest is interrupted and the board is written with what ran (the rest
#       NOT RUN). --shard I/N (or GATES_SHARD=I/N) runs shard I of N only and writes its results file
#       to $OUT/gates-<gates>-shard-I-of-N/; `python -m worker gates --merge` of all N files gives the board.
#   scripts/gpu-gates.sh run-parallel [GATE...] [-- PYTEST_ARGS...]
#       there, with 2 or more GPUs: one shard per GPU at the same time (CUDA_VISIBLE_DEVICES, a basetemp
#       each, GATES_WORKERS shared out: default 12 a shard), each under the deadline, then the merged
#       board in $OUT/gates-<gates>/. GATES_SHARDS=N sets the number of shards (default: the GPUs seen);
#       GATES_RUN_SHARDS="1 2" runs only those shards of the N (one per GPU), so that N shards can take several
#       calls on one warm machine: each call merges the results files of every shard run so far.
#   M0_COMMIT=<commit> (either run): the commit the board names; a device call's copy of the tree does not
#       carry its history, so git there answers with a stale commit "+changes".
#   GATES_EXAMPLE_SCALE=0.25 (either run): M0_EXAMPLE_SCALE, the hypothesis examples multiplier of the
#       kernel checks; the board then says "hypothesis examples x0.25": not a full run.
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
gate1 = plan["gate1_calls"]       # gate 1 runs in call gate1 (the last: its Qwen2.5 rows need every part), gates 2-4 after
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
  run|run-parallel) ;;
  *) echo "usage: $0 pack [--with-qwen] | stage | run [GATE...] [--shard I/N] [-- PYTEST_ARGS...]" \
          "| run-parallel [GATE...] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
esac


# -- run --------------------------------------------------------------------------------------
gates=() pytest_args=() shard="${GATES_SHARD:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; pytest_args=("$@"); break ;;
    --shard) [ "$mode" = run ] || { echo "--shard is for run (run-parallel shards by itself)" >&2; exit 2; }
             shard="${2:-}"; shift 2 ;;
    [1-4]) gates+=("$1"); shift ;;
    *) echo "unknown gate '$1' (expected 1-4, --shard I/N, then -- and pytest arguments)" >&2; exit 2 ;;
  esac
done
[ "$mode" = run ] || shard=""
if [ -n "$shard" ] && ! [[ "$shard" =~ ^([0-9]+)/([0-9]+)$ && ${BASH_REMATCH[1]} -ge 1
                              && ${BASH_REMATCH[1]} -le ${BASH_REMATCH[2]} ]]; then
  echo "shard '$shard': expected I/N with 1 <= I <= N" >&2; exit 2
fi
[ ${#gates[@]} -gt 0 ] || gates=(1 2 3 4)
gates_label="gates-$(IFS=-; echo "${gates[*]}")"
shard_tag() { echo "shard-${1%/*}-of-${1#*/}"; }      # 1/2 -> shard-1-of-2, as gates/harness/shards.py names it
label="$gates_label${shard:+-$(shard_tag "$shard")}"
OUT="${OUT:-reports/gpu}"
dest="$OUT/$label"
mkdir -p "$dest" reports
log="$dest/gates.log"

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
shards=1
if [ "$mode" = run-parallel ]; then
  shards="${GATES_SHARDS:-$gpus}"
  if ! [ "$shards" -ge 2 ] 2>/dev/null; then
    echo "run-parallel needs 2 or more shards: $gpus GPUs seen (GATES_SHARDS=N sets the number)" >&2; exit 2
  fi
fi

# shellcheck source=scripts/gpu-common.sh
. scripts/gpu-common.sh
install_wheels || { echo "wheel installation failed" | tee -a "$log"; exit 1; }
{
  echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
  # status ends with "== oracles": the transformers/tokenizers/huggingface_hub versions this run imports
  # (the staged oracle wheels, or the image's own): the board's reference libraries.
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
# Fewer hypothesis examples in the kernel checks (stories/foundation/_cuda_conformance.py): the board says so.
[ -z "${GATES_EXAMPLE_SCALE:-}" ] || export M0_EXAMPLE_SCALE="$GATES_EXAMPLE_SCALE"
workers=$(( ${GATES_WORKERS:-$(( 12 * shards ))} / shards ))
[ "$workers" -ge 1 ] || workers=1
custom_args=${#pytest_args[@]}
# --durations: the slowest tests in the log, to plan the next run
[ "$custom_args" -gt 0 ] || pytest_args=(-n "$workers" --dist loadgroup --durations=40)
gate_opts=()
for g in "${gates[@]}"; do gate_opts+=(--gate "$g"); done
device="${GATES_DEVICE:-cuda}"   # cpu: the same run on the NumPy reference (to try this script without a GPU)
deadline="${GATES_DEADLINE:-530}"

# run_session LOG SHARD: one pytest session (SHARD I/N, or empty for the whole run) with its own basetemp,
# interrupted at the deadline; its exit status is the session's.
run_session() {
  local session_log="$1" session_shard="$2" basetemp="/tmp/m0-gates-basetemp-$gates_label" shard_opts=() left runner
  local watchdog rc
  if [ -n "$session_shard" ]; then
    shard_opts=(--shard "$session_shard")
    basetemp="$basetemp-$(shard_tag "$session_shard")"
  fi
  # A basetemp of its own: pytest empties a given basetemp at the start, and the numbered folders under
  # /tmp/pytest-of-<user> are left to other runs.
  echo "== python -m worker gates --device $device ${gate_opts[*]}${session_shard:+ }${shard_opts[*]} -- ${pytest_args[*]}" \
       "--basetemp $basetemp${CUDA_VISIBLE_DEVICES:+ (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)}" | tee -a "$session_log"
  left=$(( deadline - SECONDS ))   # SECONDS: since this script started (wheels, twin included)
  [ "$left" -gt 30 ] || left=30
  # A background job starts with SIGINT ignored (bash, without job control), and Python then never turns
  # SIGINT into KeyboardInterrupt: restore the default before exec, so the deadline below can interrupt pytest.
  python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
    python3 -m worker gates --device "$device" "${gate_opts[@]}" "${shard_opts[@]}" \
    -- "${pytest_args[@]}" --basetemp "$basetemp" >> "$session_log" 2>&1 &
  runner=$!
  (
    # Its sleeps end with it (the trap), so nothing outlives the run holding its output open.
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$left" & sleeper=$!; wait "$sleeper"
    # SIGINT to pytest itself (the child of `worker gates`): it stops its workers and still writes its results.
    for child in $(pgrep -P "$runner"); do kill -INT "$child" 2>/dev/null; done
    echo "deadline of $deadline s reached: pytest interrupted, the board shows what ran" >> "$session_log"
    sleep 30 & sleeper=$!; wait "$sleeper"
    kill -TERM "$runner" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  watchdog=$!
  wait "$runner"
  rc=$?
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  return $rc
}

rm -f reports/gate-board.md reports/gate-board.json reports/gate-board.html   # no stale board if none is written
start=$(date +%s)
if [ "$mode" = run ]; then
  results="reports/gate-results${shard:+-$(shard_tag "$shard")}.json"
  rm -f "$results"
  run_session "$log" "$shard"
  rc=$?
  cp "$results" "$dest/" 2>/dev/null
else
  # One shard per GPU, side by side; each has its own log, conformance table and Allure folder (the plugin's).
  # GATES_RUN_SHARDS="3 4" runs only those of the N here: the others' results files, from an earlier call on
  # this machine (reports/ stays while it is warm), join the merge once all N are in.
  run_list=(${GATES_RUN_SHARDS:-$(seq 1 "$shards")})
  for i in "${run_list[@]}"; do
    [[ "$i" =~ ^[0-9]+$ && "$i" -ge 1 && "$i" -le "$shards" ]] \
      || { echo "GATES_RUN_SHARDS: '$i' is not a shard of 1..$shards" >&2; exit 2; }
    rm -f "reports/gate-results-$(shard_tag "$i/$shards").json"
  done
  [ -n "${GATES_RUN_SHARDS:-}" ] || rm -f reports/gate-results-shard-*-of-"$shards".json
  pids=()
  for slot in "${!run_list[@]}"; do
    i=${run_list[$slot]}
    tag=$(shard_tag "$i/$shards")
    gpu_env=()
    [ "$gpus" -ge 1 ] && gpu_env=(CUDA_VISIBLE_DEVICES=$(( slot % gpus )))
    : > "$dest/gates-$tag.log"
    # shellcheck disable=SC2030  # each shard's environment is its own
    ( export "${gpu_env[@]}" M0_CONFORMANCE_JSON="$PWD/reports/cuda_conformance-$tag.json"
      run_session "$dest/gates-$tag.log" "$i/$shards" ) &
    pids+=($!)
  done
  for slot in "${!pids[@]}"; do
    wait "${pids[$slot]}"
    echo "shard ${run_list[$slot]}/$shards exit status: $?" | tee -a "$log"
  done
  for f in reports/gate-results-shard-*-of-"$shards".json reports/cuda_conformance-shard-*-of-"$shards".json; do
    [ -f "$f" ] && cp "$f" "$dest/"
  done
  cat "$dest"/gates-shard-*-of-"$shards".log >> "$log"
  mapfile -t shard_files < <(ls reports/gate-results-shard-*-of-"$shards".json 2>/dev/null)
  if [ ${#shard_files[@]} -gt 0 ] && [ ${#shard_files[@]} -lt "$shards" ]; then
    echo "results of ${#shard_files[@]} of $shards shards here (${shard_files[*]}): the merged board below" \
         "shows the others' tests NOT RUN until they have run (GATES_RUN_SHARDS)" | tee -a "$log"
  fi
  if [ ${#shard_files[@]} -gt 0 ]; then
    echo "== python -m worker gates --merge ${shard_files[*]}" | tee -a "$log"
    python3 -m worker gates --merge "${shard_files[@]}" >> "$log" 2>&1
    rc=$?
    cp reports/gate-results.json "$dest/" 2>/dev/null
  else
    echo "no shard wrote its results: no board" | tee -a "$log"
    rc=1
  fi
fi
echo "gates exit status: $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$|deadline|refused" "$log" | tail -8
cp reports/gate-board.md reports/gate-board.json reports/gate-board.html "$dest/" 2>/dev/null
# the CUDA conformance table (one a shard under run-parallel, copied above) and the 64-step greedy identities
# the kernel checks wrote during the run
[ "$mode" = run ] && cp reports/cuda_conformance.json "$dest/" 2>/dev/null
cp reports/cuda_end_to_end.json "$dest/" 2>/dev/null
if [ -n "$shard" ]; then   # a shard's own board (the other shards' tests NOT RUN), then how to get the run's
  sed -n '/= gate board of shard/,/^OVERALL/p' "$log" | grep -vE '^  PASS ' | tail -n 80
  echo "shard $shard: its results are in $dest; the board of the run: python -m worker gates --merge" \
       "with the results files of all ${shard#*/} shards" | tee -a "$log"
  exit $rc
fi
python3 - "$dest/gate-board.json" <<'PY' 2>&1 | tee -a "$log"
import json, sys
try:
    board = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no gate board was written")
print(f"\nGate board on {board['device']}: overall {board['overall']}")
for note in board.get("notes", []):
    print(f"  NOTE: {note}")
for gate in board["gates"]:
    counts = ", ".join(f"{n} {k}" for k, n in gate["counts"].items())
    print(f"  Gate {gate['gate']} {gate['title']}: {gate['verdict']} ({counts})")
    for row in gate["rows"]:
        if row["status"] != "PASS":
            print(f"    {row['status']:8} {row['id']:20} {row['reason'][:150]}")
PY
exit $rc
