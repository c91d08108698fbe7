"""Preserve ratios and channel counts.

A **preserve ratio** is the fraction of a group's channels that is *kept* (1.0 = unpruned), the
convention of AMC's official code. Counts are multiples of ``round_to`` (or the full width), never
below ``ceil(lbound * channels)`` and never zero; the *executed* ratio is count / channels.
"""
from __future__ import annotations

import math


def allowed_counts(channels: int, round_to: int = 1, lbound: float = 0.0) -> list[int]:
    """Channel counts a group may keep, ascending (multiples of ``round_to`` and the full width)."""
    if round_to < 1:
        raise ValueError("round_to must be >= 1")
    counts = sorted(set(range(round_to, channels + 1, round_to)) | {channels})
    floor = max(1, math.ceil(lbound * channels - 1e-9))
    above = [c for c in counts if c >= floor]
    return above or [channels]


def channels_for_ratio(ratio: float, channels: int, round_to: int = 1, lbound: float = 0.0) -> int:
    """The allowed count nearest to ``ratio * channels`` (ties round up)."""
    counts = allowed_counts(channels, round_to, lbound)
    target = ratio * channels
    return min(counts, key=lambda c: (abs(c - target), -c))


def largest_count_at_most(cap: float, channels: int, round_to: int = 1, lbound: float = 0.0) -> int:
    """The largest allowed count <= ``cap`` (the smallest allowed count if none is)."""
    counts = allowed_counts(channels, round_to, lbound)
    fitting = [c for c in counts if c <= cap + 1e-9]
    return fitting[-1] if fitting else counts[0]
