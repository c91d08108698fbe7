"""Least-squares weight reconstruction of a consumer layer after its input channels are pruned.

Given the Gram matrix G = X^T X of the layer's dense input samples X (im2col columns for convs),
the weights W' over the kept columns K that best reproduce the dense outputs Y = X W^T solve

    (X_K^T X_K + lambda I) W'^T = X_K^T X W^T,   i.e.   (G[K, K] + lambda I) W'^T = G[K, :] W^T

(AMC's channel-pruning step; the bias is unchanged because Y excludes it). ``lambda`` is
``ridge`` times the mean diagonal of G[K, K].
"""
from __future__ import annotations

import torch


def kept_columns(in_features_kept: torch.Tensor, kernel_positions: int) -> torch.Tensor:
    """im2col column indices (channel major) of kept input features for a kernel of ``kernel_positions``."""
    return (in_features_kept.view(-1, 1) * kernel_positions + torch.arange(kernel_positions)).flatten()


def least_squares_weight(weight: torch.Tensor, gram: torch.Tensor, kept_in: torch.Tensor,
                         ridge: float = 1e-4, groups: int = 1) -> torch.Tensor:
    """Reconstructed weight (out, len(kept_in) / groups, *kernel) for a conv/linear ``weight`` (out, in / groups, *kernel).

    ``gram``: (in * kernel positions) squared Gram matrix of the dense input samples (all input
    channels, channel-major im2col columns). ``kept_in``: sorted indices of the kept input features
    (channels), the same number in each of the ``groups`` conv groups. Each conv group is solved on
    its own: its output channels only read its own inputs.
    """
    out_c, in_per_group = weight.shape[:2]
    k = weight[0, 0].numel()
    rows = out_c // groups
    kept_per_group = kept_in.view(groups, -1)
    g = gram.double()
    solved = []
    for j in range(groups):
        dense_cols = kept_columns(torch.arange(j * in_per_group, (j + 1) * in_per_group), k)
        cols = kept_columns(kept_per_group[j], k)
        w2d = weight[j * rows:(j + 1) * rows].detach().reshape(rows, in_per_group * k).double().cpu()
        a = g[cols][:, cols]
        a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cols), dtype=a.dtype)
        b = g[cols][:, dense_cols] @ w2d.T
        solved.append(torch.linalg.solve(a, b).T)
    return torch.cat(solved).to(weight.dtype).reshape(out_c, kept_per_group.shape[1], *weight.shape[2:])
