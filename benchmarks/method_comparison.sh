#!/usr/bin/env bash
# Method comparison searches: DDPG and random search with the same number of evaluated episodes, per seed,
# at a FLOPs target (the uniform policy is evaluated inside every run, see baselines.json).
# Interrupted runs are resumed; finished ones are skipped. AGENTS="ddpg" limits the agents (e.g. two jobs side by side;
# any of ddpg td3 sac random tpe). RULE=scale|clamp adds --budget-rule and names the folders AGENT_RULE-seedN;
# TAG=name (for runs with other extra flags) names them AGENT_RULE_TAG-seedN.
# Summarise with benchmarks/compare_methods.py.
#
#   benchmarks/method_comparison.sh NAME MODEL CHECKPOINT DATA_DIR EPISODES WARMUP "SEEDS" [extra amc search flags]
#   e.g. benchmarks/method_comparison.sh resnet20-50flops resnet20 ckpt.pt /tmp/cifar 300 100 "0 1 2" --threads 1
set -euo pipefail
name=$1 model=$2 checkpoint=$3 data_dir=$4 episodes=$5 warmup=$6 seeds=$7
shift 7
amc=${AMC:-.venv/bin/amc}
for seed in $seeds; do
  for agent in ${AGENTS:-ddpg random}; do
    out=results/benchmarks/$name/$agent${RULE:+_$RULE}${TAG:+_$TAG}-seed$seed
    if [ -f "$out/summary.md" ]; then
      echo "done already: $out"
    elif [ -f "$out/checkpoint.pt" ]; then
      "$amc" search --resume "$out" --quiet
    else
      "$amc" search --model "$model" --checkpoint "$checkpoint" --dataset cifar10 --data-dir "$data_dir" \
        --holdout 5000 --search-images 2000 --split-seed 0 --target 0.5 --episodes "$episodes" --warmup-episodes "$warmup" \
        --agent "$agent" --seed "$seed" --out "$out" --quiet ${RULE:+--budget-rule $RULE} "$@"
    fi
  done
done
