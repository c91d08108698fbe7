"""Gymnasium environments of amc. Importing this package registers ``amc/ChannelPruning-v0``."""
from gymnasium.envs.registration import register, registry

from .channel_pruning import ChannelPruningEnv, EpisodeResult
from .task import PruningTask, make_task, open_task

ENV_ID = "amc/ChannelPruning-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="amc_envs.channel_pruning:ChannelPruningEnv")

__all__ = ["ChannelPruningEnv", "ENV_ID", "EpisodeResult", "PruningTask", "make_task", "open_task"]
