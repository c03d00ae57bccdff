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
# Writes RESULTS_DIR/NAME (default results/find-cifar10-cpu): the experiment, its report
# (table1.*, search_outcome.csv) and bench.log (the command's output and `time`).
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
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- nasproxy || echo ' (nasproxy/ with changes)')"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} >"$LOG"
start=$(date +%s)
"$PY" -m nasproxy.cli search --dataset "imagefolder:$DATA" \
  --proxy "$PROXIES/random.json" --proxy "$PROXIES/influence.json" \
  --whole --whole-per-class 500 \
  --archs 'w32-*-maxpooling' --archs 'w32-*-avgpooling' --sample 8 --whole-sample 8 \
  --whole-top 3 --epochs 6 --seeds 2 \
  --name "$NAME" --results-dir "$RESULTS_DIR" 2>>"$LOG" | tee -a "$LOG"
echo "wall: $(($(date +%s) - start)) s for the search" >>"$LOG"
"$PY" -m nasproxy.cli report "$NAME" --results-dir "$RESULTS_DIR" --top-k 3 | tee -a "$LOG"
