"""Synthetic activations with a planted label direction: the probe tests and the analysis benchmark use them.

`activations`: each layer is a shared mean plus a low-rank prompt factor (the same prompts give similar activations
in every model), per-model noise, and `signal[l]·(2y − 1)` along a unit direction per layer. `residual_stream`: the
same idea at the scale and shape of an LLM's residual stream (norms growing with depth, outlier dimensions,
layer-to-layer correlation, a low-rank label signal).
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


def activations(y: np.ndarray, signal: np.ndarray, directions: torch.Tensor, *, model_seed: int = 1) -> torch.Tensor:
    """[L, n, D] float32 activations; `signal` [L] is the separation along `directions` [L, D] at each layer."""
    n_layers, hidden = directions.shape
    rank, mean_scale, factor_scale, noise_scale = 16, 0.2, 0.1, 0.05
    world = torch.Generator().manual_seed(0)  # the same for every model: fine-tunes of one base
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


def residual_stream(
    y: np.ndarray,
    signal: np.ndarray,
    directions: torch.Tensor,
    *,
    world_seed: int = 0,
    model_seed: int = 1,
    norms: tuple[float, float] = (30.0, 400.0),
    rank: int = 64,
    outlier_dims: int = 4,
    layer_corr: float = 0.9,
    model_share: float = 0.3,
) -> torch.Tensor:
    """[L, n, D] float32 activations shaped like an LLM's last-token residual stream.

    - Row norms grow geometrically with depth from `norms[0]` to `norms[1]`.
    - A shared mean carries most of the norm, and a few outlier dimensions hold large values that vary ±10% per prompt.
    - Prompts differ along a rank-`rank` subspace with a decaying spectrum plus isotropic prompt noise, shared by
      every model of the same `world_seed` (fine-tunes of one base), of which `model_share` of the variance is
      replaced by the model's own. All of it evolves across layers as an AR(1) with correlation `layer_corr`, as a
      residual stream does.
    - The label sits in a low-rank subspace `directions` [L, k, D] (unit rows): a shift of ±`signal[l]`·σ along
      the first direction and a label-correlated latent of scale `signal[l]`·σ along the others, where σ is the
      per-direction spread of the prompt-to-prompt variation at that layer.
    """
    n_layers, k, hidden = directions.shape
    n = len(y)
    world = torch.Generator().manual_seed(world_seed)
    own = torch.Generator().manual_seed(model_seed)
    scales = torch.from_numpy(np.geomspace(norms[0], norms[1], n_layers)).float()
    sign = torch.from_numpy(2.0 * y - 1.0).float()
    factors = torch.randn(n, rank, generator=world)
    spectrum = torch.linspace(1.0, 0.1, rank)[:, None]
    spectrum = spectrum / spectrum.norm()
    outliers = torch.randperm(hidden, generator=world)[:outlier_dims]
    outlier_jitter = 1 + 0.1 * torch.randn(n, outlier_dims, generator=world)
    latents = 0.5 * sign[:, None] + torch.randn(n, k - 1, generator=own)
    keep, fresh = layer_corr, (1 - layer_corr**2) ** 0.5
    mean_dir = torch.randn(hidden, generator=world)
    basis = torch.randn(rank, hidden, generator=world)
    shared_noise = torch.randn(n, hidden, generator=world)
    own_noise = torch.randn(n, hidden, generator=own)
    out = torch.empty(n_layers, n, hidden)
    for layer in range(n_layers):
        if layer:
            mean_dir = keep * mean_dir + fresh * torch.randn(hidden, generator=world)
            basis = keep * basis + fresh * torch.randn(rank, hidden, generator=world)
            shared_noise = keep * shared_noise + fresh * torch.randn(n, hidden, generator=world)
            own_noise = keep * own_noise + fresh * torch.randn(n, hidden, generator=own)
        noise = (1 - model_share) ** 0.5 * shared_noise + model_share**0.5 * own_noise
        scale = float(scales[layer])
        spread = 0.45 * scale * factors @ (spectrum * basis) / hidden**0.5 + 0.35 * scale * noise / hidden**0.5
        sigma = 0.57 * scale / hidden**0.5  # per-direction std of `spread`
        x = spread + 0.5 * scale * mean_dir / mean_dir.norm()
        x[:, outliers] += 0.25 * scale * outlier_jitter
        strength = float(signal[layer]) * sigma
        x += strength * sign[:, None] * directions[layer, 0]
        if k > 1:
            x += strength * latents @ directions[layer, 1:]
        out[layer] = x
    return out
