"""Pruners (physical channel removal, masks), recovery, and the engine that drives them."""
from .channel import ChannelPruner
from .engine import PruneResult, PruningEngine, needs_calibration
from .mask import MaskPruner, fold_masks, sparsity
from .recovery import least_squares_weight, recalibrate_batchnorm, reconstruct

__all__ = ["ChannelPruner", "MaskPruner", "PruneResult", "PruningEngine", "fold_masks", "least_squares_weight", "needs_calibration",
           "recalibrate_batchnorm", "reconstruct", "sparsity"]
