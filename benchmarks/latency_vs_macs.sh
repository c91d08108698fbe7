#!/usr/bin/env bash
# A latency-budgeted search vs a MACs-budgeted one at the same MACs, per seed (issue 15):
#   1. the latency table, measured alone (amc uniform --cost latency caches it for the searches);
#   2. per seed, a TPE search at TARGET of the dense latency (batch 1, the table's prediction), two seeds at a time;
#   3. per seed, a TPE search at the MACs ratio that the latency search's best policy kept;
#   4. per seed, alone: both best policies applied and timed beside the dense model, test top-1
#      (benchmarks/latency_vs_macs_search.py -> results/benchmarks/latency/search_vs_macs-NAME-seedN.json).
# Finished searches are skipped and interrupted ones resumed, so rerunning the same command continues it.
#
#   benchmarks/latency_vs_macs.sh NAME CHECKPOINT DATA_DIR TARGET "SEEDS" RUNS_DIR [extra amc search flags]
#   e.g. benchmarks/latency_vs_macs.sh mobilenet_v2 ck.pt /tmp/cifar 0.5 "0 1" /tmp/lat-runs
set -euo pipefail
name=$1 checkpoint=$2 data_dir=$3 target=$4 seeds=$5 runs=$6
shift 6
extra=("$@")
amc=${AMC:-.venv/bin/amc} python=${PYTHON:-.venv/bin/python} cache=${CACHE:-/tmp/amc-cache}
data=(--checkpoint "$checkpoint" --dataset cifar10 --data-dir "$data_dir" --cache-dir "$cache")
[ -f "$checkpoint" ] || { echo "latency_vs_macs.sh: checkpoint not found: $checkpoint" >&2; exit 2; }
[ -d "$data_dir" ] || { echo "latency_vs_macs.sh: data folder not found: $data_dir" >&2; exit 2; }
created=0
[ -d "$runs" ] || { mkdir -p "$runs"; created=1; }

search() {  # COST TARGET SEED OUT
  if [ -f "$4/summary.md" ]; then
    echo "done already: $4"
  elif [ -f "$4/checkpoint.pt" ]; then
    "$amc" search --resume "$4" --quiet
  else
    "$amc" search "${data[@]}" --search-images 500 --agent tpe --episodes 150 --threads 1 \
      --cost "$1" --target "$2" --seed "$3" --out "$4" --quiet "${extra[@]}"
  fi
}

if [ ! -f "$runs/uniform-latency.json" ] && ! "$amc" uniform "${data[@]}" --cost latency --target "$target" \
    --threads 1 --out "$runs/uniform-latency.json"; then
  [ "$created" = 0 ] || rmdir "$runs"  # a bad checkpoint or target leaves no empty runs folder behind
  exit 1
fi
wait_all() { for pid in "$@"; do wait "$pid"; done; }  # fails (set -e) when a search failed
pids=()
for seed in $seeds; do search latency "$target" "$seed" "$runs/$name-latency-s$seed" & pids+=($!); done
wait_all "${pids[@]}"
pids=()
for seed in $seeds; do
  macs=$("$python" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['metrics']['macs_ratio'], 4))" \
    "$runs/$name-latency-s$seed/best_policy.json")
  search macs "$macs" "$seed" "$runs/$name-macs-s$seed" & pids+=($!)
done
wait_all "${pids[@]}"
for seed in $seeds; do
  "$python" benchmarks/latency_vs_macs_search.py "$runs/$name-latency-s$seed" "$runs/$name-macs-s$seed" \
    --out "results/benchmarks/latency/search_vs_macs-$name-seed$seed.json"
done
