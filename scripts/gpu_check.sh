#!/usr/bin/env bash
# One prepared GPU check, at most 8 minutes of a GPU host's time: the training benchmark
# (plain vs stacked, scripts/bench_train.py) and the sweep benchmark (plain vs fused search,
# Ray included, scripts/bench_sweep.py) at sizes that fit, everything written under $OUT
# (results/bench/README.md, "The one prepared GPU command").
#
# On a GPU host prepared beforehand (nasproxy's dependencies, Ray included, importable by
# $PYTHON), from the repository root:
#
#     NASPROXY_DATA=/path/to/cifar10-jpeg OUT=/path/to/out bash scripts/gpu_check.sh
#
# Rehearsal with tiny sizes (any machine, CPU is fine; digits, so no NASPROXY_DATA):
#
#     GPU_CHECK_TINY=1 OUT=/tmp/gpu-check bash scripts/gpu_check.sh
#
# Variables:
#   OUT                 (required) the folder every output goes to, one level deep
#   NASPROXY_DATA       (required unless GPU_CHECK_TINY) the CIFAR-10 copy: a folder or
#                       .tar.gz in the ImageFolder layout
#   PYTHON              the interpreter that imports nasproxy (default python)
#   NASPROXY_DATA_ROOT  the decode cache (default /tmp/nasproxy-cache)
#   GPU_CHECK_TINY      set: tiny sizes on the digits data, each limit 4x
#
# Each step has its own time limit (their sum, 7 minutes, stays under 8); a step that fails or
# runs out of time is logged and the next one still runs. Files under $OUT (5, one level):
# gpu_check.log, env.txt (nasproxy.provenance's record: commit, date, device, versions; then
# the GPU), train-cuda-fp32.json, train-cuda-fast.json, sweep-cuda.json.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
export NASPROXY_DATA_ROOT="${NASPROXY_DATA_ROOT:-/tmp/nasproxy-cache}"
PY="${PYTHON:-python}"
LOG="$OUT/gpu_check.log"

if [ -n "${GPU_CHECK_TINY:-}" ]; then
  DATASET=digits
  TRAIN_ARGS=(--tiny)
  SWEEP_ARGS=(--tiny)
  SUFFIX=tiny
  SLACK=4  # a shared CPU is slow at Ray start-up: the rehearsal's limits are 4x
else
  DATASET="imagefolder:${NASPROXY_DATA:?set NASPROXY_DATA to the CIFAR-10 copy}"
  TRAIN_ARGS=(--dataset "$DATASET" --archs 16 --epochs 5 --whole-slice 5000 --eval-size 1000)
  SWEEP_ARGS=(--dataset "$DATASET" --archs 8 --epochs 5 --proxies 4 --proxy-size 1000
              --seeds 2 --whole-slice 5000 --whole-epochs 2)
  SUFFIX=cuda
  SLACK=1
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its outcome
  local name=$1 limit=$(($2 * SLACK))
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start))s" >>"$LOG"
}

: >"$LOG"
{
  "$PY" -c 'import json, torch
from nasproxy.provenance import provenance
record = provenance("cuda" if torch.cuda.is_available() else "cpu")
record["command"] = "bash scripts/gpu_check.sh"
print("provenance:", json.dumps(record))'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, ray; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); print('ray', ray.__version__)"
  "$PY" -c "import nasproxy.search, sys; print('search imports:', sorted(m for m in ('pulp', 'cvxpy') if m in sys.modules) or 'no solver packages')"
} >"$OUT/env.txt" 2>&1

# decode the dataset once into the cache every later step reads (60,000 JPEGs for CIFAR-10)
step decode 80 "$PY" -c "import sys; from nasproxy.data import load_dataset; print(load_dataset(sys.argv[1]).fingerprint)" "$DATASET"
# stacked trainer vs plain, fp32: exact streams + CUDA graphs (the provisional search default)
step train-fp32 80 "$PY" scripts/bench_train.py "${TRAIN_ARGS[@]}" --cuda-graphs \
  --out "$OUT/train-$SUFFIX-fp32.json"
# every fast option: bf16 + channels-last + CUDA graphs + one shared stream per stack
step train-fast 80 "$PY" scripts/bench_train.py "${TRAIN_ARGS[@]}" --cuda-graphs --bf16 \
  --channels-last --rng shared --out "$OUT/train-$SUFFIX-fast.json"
# the sweep through nasproxy search itself, plain vs fused, with the search's defaults
step sweep 180 "$PY" scripts/bench_sweep.py "${SWEEP_ARGS[@]}" --out "$OUT/sweep-$SUFFIX.json"
ls -l "$OUT" >>"$LOG"
