"""Gymnasium environments of amc. Importing this package registers ``amc/ChannelPruning-v0``."""
from gymnasium.envs.registration import register, registry

from .channel_pruning import ChannelPruningEnv
from .task import PruningTask, load_task

ENV_ID = "amc/ChannelPruning-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.channel_pruning:ChannelPruningEnv")

__all__ = ["ChannelPruningEnv", "PruningTask", "load_task", "ENV_ID"]
