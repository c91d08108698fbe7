"""amc: find how much to prune each layer of a trained CNN, then prune it for real.

The library API (no argparse, no printing)::

    import amc
    groups = amc.inspect(model, example_input)                  # channel groups, prunable or why not
    policy = amc.uniform_policy(model, example_input, 0.5)      # same preserve ratio, <= 50% of the MACs
    policy = amc.Policy.load("best_policy.json")                # or a searched one
    small = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy)).model
    amc.cost.macs(small, example_input), amc.cost.params(small)

Unstructured pruning, sensitivity analysis, schedules and sparse files::

    masked = amc.prune_unstructured(model, 0.9, scope="global", keep_dense=("conv1", "fc"))
    curves = amc.sensitivity(model, example_input, score_fn, [0.2, 0.5, 0.8], granularity="weight")
    policy = amc.allocate(curves, target=0.3, tolerance=0.01, model=model, example_input=example_input)
    amc.save_sparse(masked, "model.amcs"); state_dict = amc.load_sparse("model.amcs")

Sparse training: lottery tickets (iterative magnitude pruning with rewinding) and RigL / SET / static ERK masks::

    table = amc.lottery_ticket(model, train_set, norm, amc.LotteryConfig(rounds=5, rewind_step=500), "lt", test_set=test)
    result = amc.sparse_train(model, train_set, norm, amc.SparseConfig(method="rigl", sparsity=0.9), "rigl")

Preserve ratio = fraction of a group's channels that is kept; sparsity = fraction of weights removed;
MACs = multiply-accumulates per example.
"""
from . import config, cost
from .api import inspect, uniform_policy
from .apply import AppliedPolicy, apply_policy, calibration_for
from .calibration import CalibrationSet
from .errors import AmcError
from .lottery import LotteryConfig, lottery_ticket
from .policy import Policy
from .rigl import RigL, SparseConfig, erk_sparsities, sparse_train
from .schedules import AGP, PruneRounds, agp_sparsity, schedule_callbacks
from .sensitivity import allocate, plot_sensitivity, sensitivity
from .sparse_io import load_sparse, open_sparse, save_sparse, sparse_size_report
from .structure import trace
from .unstructured import apply_masks, export_masks, layer_sparsities, magnitude_masks, prune_unstructured

__all__ = ["AGP", "AmcError", "AppliedPolicy", "CalibrationSet", "LotteryConfig", "Policy", "PruneRounds", "RigL",
           "SparseConfig", "agp_sparsity", "allocate", "apply_masks", "apply_policy", "calibration_for", "config", "cost",
           "erk_sparsities", "export_masks", "inspect", "layer_sparsities", "load_sparse", "lottery_ticket",
           "magnitude_masks", "open_sparse", "plot_sensitivity", "prune_unstructured", "save_sparse",
           "schedule_callbacks", "sensitivity", "sparse_size_report", "sparse_train", "trace", "uniform_policy"]
