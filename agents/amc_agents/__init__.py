"""Searching agents (SB3 DDPG/TD3/SAC configured as AMC, random search), the search runner, run files and reports."""
from .agent import Agent, RandomAgent, SB3Agent, make_agent
from .search import EpisodeRecord, SearchRunner, run_search
from .store import RunStore

__all__ = ["Agent", "EpisodeRecord", "RandomAgent", "RunStore", "SB3Agent", "SearchRunner", "make_agent", "run_search"]
