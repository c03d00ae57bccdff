#!/usr/bin/env bash
# Table 1 on a GPU host within its time budget: one experiment that sweeps every
# architecture on the committed proxies and the whole training split on a stratified sample
# plus each proxy's top 10, stored so that the same command run again resumes where this
# run stopped (results/README.md, "Table 1 on a GPU host: what a run does").
#
# On a GPU host prepared beforehand (nasproxy's dependencies, Ray included, importable by
# $PYTHON), from the repository root, under a time limit of about GPU_TABLE1_BUDGET + 90 s:
#
#     NASPROXY_DATA=/path/to/cifar10-jpeg OUT=/path/to/out bash scripts/gpu_table1.sh
#
# Rehearsal on any machine (CPU is fine), tiny sizes, a few minutes:
#
#     GPU_TABLE1_TINY=1 NASPROXY_DATA=/path/to/cifar10-jpeg OUT=/tmp/t1 bash scripts/gpu_table1.sh
#
# Variables (defaults for a GPU run; GPU_TABLE1_TINY=1 sets tiny ones):
#   OUT                 (required) the folder every output goes to, one level deep
#   NASPROXY_DATA       (required) the CIFAR-10 copy: a folder or .tar.gz, ImageFolder layout
#   PYTHON              the interpreter that imports nasproxy (default python3)
#   NASPROXY_DATA_ROOT  the decode cache (default /tmp/nasproxy-cache)
#   RESULTS_DIR, EXP    where the experiment lives: RESULTS_DIR/EXP (default
#                       results/table1-cifar10-gpu)
#   GPU_TABLE1_BUDGET   seconds for all steps together (default 500)
#   EPOCHS, SEEDS       training epochs (default 10) and seeds (default 1)
#   PROXY_ARCHS         `nasproxy search` arguments choosing the proxies' architectures
#                       (e.g. "--sample 240"; default all 720)
#   WHOLE_SHAPES        shapes sampled for the whole split, 3 activations each (default 32)
#   WHOLE_TOP           each proxy's top K confirmed on the whole split (default 10)
#   TRIAL_SIZE          units a Ray trial (default 48: 4 proxy stacks of 12)
#   FRONTIER_METHODS, FRONTIER_BUDGETS, FRONTIER_SEEDS, FRONTIER_ARCHS, FRONTIER_EXP
#                       the frontier's methods (default random,herding,forgetting,influence),
#                       budgets (10,50,100,500), draws (0,1,2), `nasproxy search` arguments
#                       choosing its architectures (default --sample 120) and experiment
#                       (frontier-cifar10-gpu); FRONTIER_EPOCHS its epochs (default EPOCHS;
#                       at least 3, as halving at rate 3 needs two rungs)
#   NB201_SAMPLE, NB201_EXP  the cells sampled (default 60) and the experiment (nb201-cifar10-gpu)
#   BENCH_S, PACK_EVERY the benchmark's limit (default 120 s); seconds between archives
#                       and rate lines (default 30)
#
# Steps, each under `timeout` within the one budget:
#   decode  decode the dataset once and check its fingerprint against the proxy files
#   bench   scripts/bench_sweep.py at small sizes, only when results/bench/ has no CUDA
#           sweep benchmark yet
#   table1  nasproxy search, one experiment -> $EXP (the one `nasproxy report` reads):
#           stage 1: every architecture (PROXY_ARCHS) on the five committed proxies
#           (PROXY_FILES below), and the whole training split on a stratified sample of
#           WHOLE_SHAPES shapes with all 3 activations of each (complete shapes fuse on
#           the whole split, --whole-archs); stage 2 (--whole-top WHOLE_TOP): each proxy's
#           top K by proxy validation accuracy also on the whole split, so that the top-10
#           metrics of every proxy have the whole-set accuracy of all ten; fused
#   frontier (after table1, with the time left) the frontier around Table 1's point
#           (results/README.md, "The frontier and the NB201 cells on a GPU host"): proxies of FRONTIER_METHODS
#           at budgets FRONTIER_BUDGETS per class, draws FRONTIER_SEEDS (each draw its own
#           scoring run, built on this host, each method and draw once: a file already
#           under $FRONTIER_EXP/proxies is kept), then one sweep -> $FRONTIER_EXP on
#           FRONTIER_ARCHS with the whole split, the equal-compute whole@N of each budget
#           (--equal-compute) and successive halving (--halving 3); every unit records its
#           validation accuracy at E/27, E/9, E/3 and E
#   nb201   (after frontier, with the time left) the NAS-Bench-201 cells: a stratified
#           sample of NB201_SAMPLE cells on the Table 1 proxies and on the whole split,
#           NATS-Bench's optimiser (SGD, Nesterov, lr 0.1, batch 256) for EPOCHS epochs
#           -> $NB201_EXP
# With the experiment's unit files kept (committed, or unpacked from the archive) the same
# command resumes it and trains only what is missing (stage 2 starts once stage 1 is
# complete, in whichever run that is). A step stopped at its limit gets SIGINT first (the
# sweep stops its trials and writes its manifest), then SIGKILL; only its units in flight
# are lost.
#
# Under $OUT: gpu_table1.log, env.txt (nasproxy.provenance's record: commit, date, device,
# versions; then the GPU and the settings), table1-units.tar.gz (the experiments' manifests
# and unit files, Table 1's, the frontier's and NB201's; rewritten every PACK_EVERY seconds while the sweeps run and at the end,
# always by rename), sweep-<device>.json (when the benchmark ran). Unpack with
#     nasproxy units unpack table1-units.tar.gz --results-dir results
# The log has a `rate` line for each training set every PACK_EVERY seconds: units and
# images per second measured here, and what the rest would take at that rate.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export NASPROXY_DATA_ROOT="${NASPROXY_DATA_ROOT:-/tmp/nasproxy-cache}"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_table1.log"
ARCHIVE="$OUT/table1-units.tar.gz"
# the four proxies of the CPU table, and the influence variant with the kept-mean objective
# (the same scoring run: results/proxies-cifar10-jpeg/README.md)
PROXY_FILES=(results/table1-cifar10-cpu/proxies/{random,herding,forgetting,influence}.json
             results/proxies-cifar10-jpeg/influence-kept-mean.json)
DATASET="imagefolder:${NASPROXY_DATA:?set NASPROXY_DATA to the CIFAR-10 copy}"

if [ -n "${GPU_TABLE1_TINY:-}" ]; then
  : "${GPU_TABLE1_BUDGET:=600}" "${EPOCHS:=1}" "${SEEDS:=1}" "${WHOLE_SHAPES:=1}"
  : "${RESULTS_DIR:=${TMPDIR:-/tmp}/gpu-table1-tiny/results}" "${EXP:=table1-tiny}"
  : "${WHOLE_TOP:=1}" "${BENCH_S:=150}" "${PACK_EVERY:=30}"
  : "${TRIAL_SIZE:=16}"
  : "${FRONTIER_BUDGETS:=5,10}" "${FRONTIER_SEEDS:=0,1}" "${NB201_SAMPLE:=2}"
  : "${FRONTIER_EPOCHS:=3}"  # halving at rate 3 needs 3 epochs for two rungs
  # random only: a scoring-run method would train on the 45,000 images for minutes on a CPU
  : "${FRONTIER_METHODS:=random}" "${FRONTIER_EXP:=frontier-tiny}" "${NB201_EXP:=nb201-tiny}"
  read -r -a FRONTIER_ARCHS <<<"${FRONTIER_ARCHS:---archs w32-d1-* --sample 2}"
  FRONTIER_SCORING=(--backbone-epochs 1)
  PROXY_ARCHS=(--archs 'w32-d1-*' --sample 2)
  SHAPES_WITHIN=(--within 'w32-d1-*')
  WHOLE_OPTS=(--whole-per-class 20)
  BENCH_ARGS=(--tiny --workloads proxy)
  SUFFIX=tiny
else
  : "${GPU_TABLE1_BUDGET:=500}" "${EPOCHS:=10}" "${SEEDS:=1}" "${WHOLE_SHAPES:=32}"
  : "${RESULTS_DIR:=results}" "${EXP:=table1-cifar10-gpu}"
  : "${WHOLE_TOP:=10}" "${BENCH_S:=120}" "${PACK_EVERY:=30}"
  : "${TRIAL_SIZE:=48}"  # a proxy stack is 12 units: 4 stacks a trial, fewer trial start-ups
  read -r -a PROXY_ARCHS <<<"${PROXY_ARCHS:-}"  # default: all architectures of the space
  : "${FRONTIER_BUDGETS:=10,50,100,500}" "${FRONTIER_SEEDS:=0,1,2}" "${NB201_SAMPLE:=60}"
  : "${FRONTIER_METHODS:=random,herding,forgetting,influence}"
  : "${FRONTIER_EXP:=frontier-cifar10-gpu}" "${NB201_EXP:=nb201-cifar10-gpu}"
  : "${FRONTIER_EPOCHS:=$EPOCHS}"
  read -r -a FRONTIER_ARCHS <<<"${FRONTIER_ARCHS:---sample 120}"
  FRONTIER_SCORING=(--backbone-epochs 4)  # the CPU table's scoring run
  SHAPES_WITHIN=()
  WHOLE_OPTS=()
  BENCH_ARGS=(--dataset "$DATASET" --archs 8 --epochs 3 --proxies 4 --proxy-size 1000
              --seeds 2 --whole-slice 5000 --whole-epochs 1)
  SUFFIX=cuda
fi
EXPERIMENTS=("$EXP" "$FRONTIER_EXP" "$NB201_EXP")
WHOLE_ARCHS=()
while read -r glob; do WHOLE_ARCHS+=(--whole-archs "$glob"); done < <(
  "$PY" -m nasproxy.cli units shapes "$WHOLE_SHAPES" "${SHAPES_WITHIN[@]}")
WHOLE_ARCHS+=("${WHOLE_OPTS[@]}")
TAIL_S=20  # kept for the last pack
START=$SECONDS
START_EPOCH=$(date +%s)
PROXIES=()
for f in "${PROXY_FILES[@]}"; do PROXIES+=(--proxy "$f"); done
SEARCH=("$PY" -m nasproxy.cli search --dataset "$DATASET" "${PROXIES[@]}" --epochs "$EPOCHS"
        --seeds "$SEEDS" --trial-size "$TRIAL_SIZE" --results-dir "$RESULTS_DIR")

say() { echo "$(date -u +%T) $*" | tee -a "$LOG"; }
provenance() {  # provenance COMMAND: nasproxy.provenance's record (commit, date, device) as one line
  "$PY" -c 'import json, sys, torch
from nasproxy.provenance import provenance
record = provenance("cuda" if torch.cuda.is_available() else "cpu")
record["command"] = sys.argv[1]
print("provenance:", json.dumps(record))' "$1"
}
left() { echo $((GPU_TABLE1_BUDGET - TAIL_S - (SECONDS - START))); }

step() {  # step NAME SECONDS COMMAND...: run in a new process session (setsid), time-limited
  local name=$1 limit=$2
  shift 2
  if [ "$limit" -lt 10 ]; then say "== $name: skipped, a limit of ${limit}s"; return 1; fi
  say "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  # SIGINT to the command alone (a sweep then stops its trials and writes its manifest),
  # SIGKILL 30 s later; then whatever processes of that session are left (Ray's)
  setsid --wait timeout --foreground -s INT -k 30 "$limit" "$@" >>"$LOG" 2>&1 &
  local sid=$!
  wait "$sid"
  local rc=$?
  local left_behind
  left_behind=$(pgrep -s "$sid" || true)
  if [ -n "$left_behind" ]; then kill -9 $left_behind 2>/dev/null; fi
  say "== $name: exit $rc after $((SECONDS - start))s"
  return "$rc"
}

existing() {  # the experiments of EXPERIMENTS that have a manifest yet
  local e
  for e in "${EXPERIMENTS[@]}"; do
    if [ -f "$RESULTS_DIR/$e/manifest.json" ]; then echo "$e"; fi
  done
}

pack() {
  local have
  mapfile -t have < <(existing)
  if [ "${#have[@]}" -eq 0 ]; then return 0; fi
  "$PY" -m nasproxy.cli units pack --results-dir "$RESULTS_DIR" --out "$ARCHIVE" \
    "${have[@]}" >>"$LOG" 2>&1
}

monitor() {  # every PACK_EVERY seconds: refresh the archive, log the measured rates
  local since=$1
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM  # never in the middle of a pack
  while true; do
    sleep "$PACK_EVERY" &
    nap=$!
    wait "$nap"
    pack
    mapfile -t have < <(existing)
    "$PY" -m nasproxy.cli units rates --results-dir "$RESULTS_DIR" --since "$since" \
      "${have[@]}" 2>&1 | tee -a "$LOG"
  done
}

sweep() {  # sweep NAME LIMIT SEARCH-ARGS...: one search with the monitor running beside it
  local name=$1 limit=$2
  shift 2
  monitor "$(date +%s)" &
  local mon=$!
  step "$name" "$limit" "$@"
  local rc=$?
  kill "$mon" 2>/dev/null
  wait "$mon" 2>/dev/null
  return "$rc"
}

: >"$LOG"
{
  provenance "bash scripts/gpu_table1.sh"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
    echo "gpu: none (no nvidia-smi)"
  "$PY" -c "import sys, torch, ray, PIL; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else ''); print('ray', ray.__version__, 'pillow', PIL.__version__)"
  echo "dataset: $DATASET"
  echo "settings: budget ${GPU_TABLE1_BUDGET}s, epochs $EPOCHS, seeds $SEEDS, trial size $TRIAL_SIZE, proxy archs '${PROXY_ARCHS[*]:-all}', whole archs '${WHOLE_ARCHS[*]}' and each proxy's top $WHOLE_TOP, results $RESULTS_DIR/$EXP"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"

# the unpacked JPEGs must decode to the images the proxies were built on
if ! step decode "$(( $(left) < 150 ? $(left) : 150 ))" \
    "$PY" -m nasproxy.cli units check-data --dataset "$DATASET" "${PROXY_FILES[@]}"; then
  say "the dataset could not be read or does not match the proxy files (see the decode step); no sweep ran"
  exit 1
fi
grep -h "fingerprint" "$LOG" | tail -1 >>"$OUT/env.txt"

if "$PY" -m nasproxy.cli units has-gpu-bench results/bench >>"$LOG" 2>&1; then
  say "== bench: skipped, a CUDA sweep benchmark is committed"
else
  step bench "$(( $(left) < BENCH_S ? $(left) : BENCH_S ))" \
    "$PY" scripts/bench_sweep.py "${BENCH_ARGS[@]}" --out "$OUT/sweep-$SUFFIX.json"
fi

sweep table1 "$(left)" "${SEARCH[@]}" "${PROXY_ARCHS[@]}" --whole "${WHOLE_ARCHS[@]}" \
  --whole-top "$WHOLE_TOP" --name "$EXP"

# the frontier: each method's draws at every budget (a draw built once, on this host), then
# one sweep of them all with the whole split, its equal-compute sets and halving
FRONTIER_DIR="$RESULTS_DIR/$FRONTIER_EXP/proxies"
mkdir -p "$FRONTIER_DIR"
IFS=, read -r -a F_METHODS <<<"$FRONTIER_METHODS"
IFS=, read -r -a F_SEEDS <<<"$FRONTIER_SEEDS"
IFS=, read -r -a F_BUDGETS <<<"$FRONTIER_BUDGETS"
for method in "${F_METHODS[@]}"; do
  for seed in "${F_SEEDS[@]}"; do
    last="$FRONTIER_DIR/$method-pc${F_BUDGETS[-1]}-d$seed.json"
    if [ -f "$last" ]; then continue; fi
    outdir=$(mktemp -d "$FRONTIER_DIR/.build-XXXX")
    if (cd "$outdir" && step "proxies $method d$seed" "$(left)" "$PY" -m nasproxy.cli build-proxy \
        --method "$method" --seeds "$seed," --per-class "$FRONTIER_BUDGETS" \
        --dataset "$DATASET" --backbone w32-d3-relu-instancenorm-avgpooling \
        "${FRONTIER_SCORING[@]}"); then
      for budget in "${F_BUDGETS[@]}"; do  # budgets first, the largest last: it marks done
        mv "$outdir"/results/proxies/*-"$method-$budget-s$seed.json" \
          "$FRONTIER_DIR/$method-pc$budget-d$seed.json"
      done
    fi
    rm -rf "$outdir"
  done
done
FRONTIER_PROXIES=()
for f in "$FRONTIER_DIR"/*.json; do
  if [ -f "$f" ]; then FRONTIER_PROXIES+=(--proxy "$(basename "$f" .json)=$f"); fi
done
if [ "${#FRONTIER_PROXIES[@]}" -gt 0 ]; then
  sweep frontier "$(left)" "$PY" -m nasproxy.cli search --dataset "$DATASET" \
    "${FRONTIER_PROXIES[@]}" --epochs "$FRONTIER_EPOCHS" --seeds "$SEEDS" --trial-size "$TRIAL_SIZE" \
    --results-dir "$RESULTS_DIR" "${FRONTIER_ARCHS[@]}" --whole --equal-compute --halving 3 \
    --name "$FRONTIER_EXP"
fi

# NAS-Bench-201 cells on the Table 1 proxies and the whole split, NATS-Bench's optimiser
sweep nb201 "$(left)" "${SEARCH[@]}" --space nb201 --sample "$NB201_SAMPLE" --whole \
  "${WHOLE_OPTS[@]}" --nesterov --lr 0.1 --batch-size 256 --name "$NB201_EXP"

pack
mapfile -t have < <(existing)
"$PY" -m nasproxy.cli units rates --results-dir "$RESULTS_DIR" --since "$START_EPOCH" \
  "${have[@]}" 2>&1 | sed 's/^rate /this call, overall: /' | tee -a "$LOG"
say "done after $((SECONDS - START))s; under $OUT: $(cd "$OUT" && echo *)"
