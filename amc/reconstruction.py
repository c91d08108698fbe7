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
                         ridge: float = 1e-4) -> torch.Tensor:
    """Reconstructed weight (out, len(kept_in), *kernel) for a conv/linear ``weight`` (out, in, *kernel).

    ``gram``: (in * kernel positions) squared Gram matrix of the dense input samples.
    ``kept_in``: indices of the kept input features (channels).
    """
    out_c, in_c = weight.shape[:2]
    k = weight[0, 0].numel()
    w2d = weight.detach().reshape(out_c, in_c * k).double()
    cols = kept_columns(kept_in, k)
    g = gram.double()
    a = g[cols][:, cols]
    a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cols), dtype=a.dtype)
    b = g[cols] @ w2d.T
    solved = torch.linalg.solve(a, b).T
    return solved.to(weight.dtype).reshape(out_c, len(kept_in), *weight.shape[2:])
