"""Synthetic activations with a planted label direction: the probe tests and the analysis benchmark use them.

Each layer is a shared mean plus a low-rank prompt factor (the same prompts give similar activations in every model),
per-model noise, and `signal[l]·(2y − 1)` along a unit direction per layer.
"""

from __future__ import annotations

import numpy as np
import torch


def unit_directions(n_layers: int, hidden: int, seed: int) -> torch.Tensor:
    """Random unit vectors [L, D]."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n_layers, hidden, generator=g)
    return d / d.norm(dim=-1, keepdim=True)


def labels(n: int, balance: float, seed: int) -> np.ndarray:
    """Binary labels with P(1) = balance."""
    return (np.random.default_rng(seed).random(n) < balance).astype(np.int64)


def activations(
    y: np.ndarray,
    signal: np.ndarray,
    directions: torch.Tensor,
    *,
    world_seed: int = 0,
    model_seed: int = 1,
    rank: int = 16,
    mean_scale: float = 0.2,
    factor_scale: float = 0.1,
    noise_scale: float = 0.05,
) -> torch.Tensor:
    """[L, n, D] float32 activations; `signal` [L] is the separation along `directions` [L, D] at each layer."""
    n_layers, hidden = directions.shape
    world = torch.Generator().manual_seed(world_seed)
    own = torch.Generator().manual_seed(model_seed)
    factors = torch.randn(len(y), rank, generator=world)
    sign = torch.from_numpy(2.0 * y - 1.0).float()
    out = torch.empty(n_layers, len(y), hidden)
    decay = torch.linspace(1.0, 0.1, rank)[:, None]
    for layer in range(n_layers):
        mean = mean_scale * torch.randn(hidden, generator=world)
        basis = factor_scale * decay * torch.randn(rank, hidden, generator=world)
        noise = noise_scale * torch.randn(len(y), hidden, generator=own)
        out[layer] = mean + factors @ basis + noise + float(signal[layer]) * sign[:, None] * directions[layer]
    return out
