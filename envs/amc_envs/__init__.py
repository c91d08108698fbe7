"""Gymnasium environments of amc. Importing this package registers ``amc/ChannelPruning-v0`` and
``amc/WeightPruning-v0`` (fine-grained AMC)."""
from gymnasium.envs.registration import register, registry

from .channel_pruning import ChannelPruningEnv, EpisodeResult, Scored, policy_key
from .task import WEIGHT_SEARCH_PRUNE, PruningTask, make_task, open_task
from .weight_pruning import WeightPruningEnv

ENV_ID = "amc/ChannelPruning-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="amc_envs.channel_pruning:ChannelPruningEnv")
WEIGHT_ENV_ID = "amc/WeightPruning-v0"
if WEIGHT_ENV_ID not in registry:
    register(id=WEIGHT_ENV_ID, entry_point="amc_envs.weight_pruning:WeightPruningEnv")

__all__ = ["ChannelPruningEnv", "ENV_ID", "EpisodeResult", "PruningTask", "Scored", "WEIGHT_ENV_ID", "WEIGHT_SEARCH_PRUNE",
           "WeightPruningEnv", "make_task", "open_task", "policy_key"]
