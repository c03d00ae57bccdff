#!/usr/bin/env bash
# Benchmark of the find workflow on CIFAR-10 (JPEG q75 copy), CPU-sized: a proxy sweep of a
# stratified sample of width-32 nets with pooling on two committed proxies (random and
# influence, results/table1-cifar10-cpu/proxies/), `--whole-top 3`, and the exhaustive
# whole-split sweep of the same sample in the same experiment (`--whole-sample` of the
# same size and seed as `--sample` picks the same architectures), so the search outcome's
# cost ratio is measured, not estimated. As the cifar10-cpu preset, the "whole" split is
# a seeded class-balanced 500 per class.
#
#     bash scripts/bench_find.sh /path/to/cifar10-jpeg [RESULTS_DIR] [NAME]
#
# Arguments: the CIFAR-10 copy (a folder or .tar.gz in the ImageFolder layout), the results
# folder (default results) and the experiment's name (default find-cifar10-cpu).
# Variables: PYTHON, the interpreter that imports nasproxy (default python3);
# NASPROXY_DATA_ROOT, the decode cache (default ~/.cache/nasproxy).
#
# Writes RESULTS_DIR/NAME: the experiment, its report (table1.*, search_outcome.csv) and
# bench.log (nasproxy.provenance's record: commit, date, device; the command's output and
# the search's wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?give the CIFAR-10 (JPEG q75 copy) folder}
RESULTS_DIR=${2:-results}
NAME=${3:-find-cifar10-cpu}
PY=${PYTHON:-python3}
export RAY_USAGE_STATS_ENABLED=0
mkdir -p "$RESULTS_DIR/$NAME"
LOG="$RESULTS_DIR/$NAME/bench.log"
PROXIES=results/table1-cifar10-cpu/proxies
"$PY" -c 'import json, shlex, sys, torch
from nasproxy.provenance import provenance
record = provenance("cuda" if torch.cuda.is_available() else "cpu")
record["command"] = shlex.join(["bash", "scripts/bench_find.sh", *sys.argv[1:]])
print("provenance:", json.dumps(record))' "$@" >"$LOG"
start=$(date +%s)
"$PY" -m nasproxy.cli search --dataset "imagefolder:$DATA" \
  --proxy "$PROXIES/random.json" --proxy "$PROXIES/influence.json" \
  --whole --whole-per-class 500 \
  --archs 'w32-*-maxpooling' --archs 'w32-*-avgpooling' --sample 8 --whole-sample 8 \
  --whole-top 3 --epochs 6 --seeds 2 \
  --name "$NAME" --results-dir "$RESULTS_DIR" 2>>"$LOG" | tee -a "$LOG"
echo "wall: $(($(date +%s) - start)) s for the search" >>"$LOG"
"$PY" -m nasproxy.cli report "$NAME" --results-dir "$RESULTS_DIR" --top-k 3 | tee -a "$LOG"
