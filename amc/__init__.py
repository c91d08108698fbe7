"""amc: find how much to prune each layer of a trained CNN, then prune it for real.

The library API (no argparse, no printing)::

    import amc
    groups = amc.inspect(model, example_input)                  # channel groups, prunable or why not
    policy = amc.uniform_policy(model, example_input, 0.5)      # same preserve ratio, <= 50% of the MACs
    policy = amc.Policy.load("best_policy.json")                # or a searched one
    small = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy)).model
    amc.cost.macs(small, example_input), amc.cost.params(small)

Preserve ratio = fraction of a group's channels that is kept; MACs = multiply-accumulates per example.
"""
from . import config, cost
from .api import inspect, uniform_policy
from .apply import AppliedPolicy, apply_policy, calibration_for
from .calibration import CalibrationSet
from .errors import AmcError
from .policy import Policy
from .structure import trace

__all__ = ["AmcError", "AppliedPolicy", "CalibrationSet", "Policy", "apply_policy", "calibration_for", "config",
           "cost", "inspect", "trace", "uniform_policy"]
