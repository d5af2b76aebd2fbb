"""Batched L2 logistic regression and rank-based AUROC statistics, exact to sklearn's settings.

The study fits `LogisticRegression(C, penalty="l2", solver="lbfgs")` on raw activations, one layer at a time. It
minimises ½‖w‖² + C·Σ log(1 + exp(−yᵢ(xᵢ·w + b))) with an unpenalised intercept. With n ≪ d the optimum lies in
the span of the (centred) training rows, w = X꜀ᵀa, so we run Newton's method on the n-dimensional dual coefficients
with the Gram matrix K = X꜀X꜀ᵀ, for all layers at once. Centring is exact here: the intercept absorbs the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

ARMIJO = 1e-4
LINE_SEARCH_STEPS = 30
# Newton stops when half the squared Newton decrement (the predicted decrease) is below this, per example.
DECREMENT_TOL = 1e-13
# The study's rule: predictions with std below this are constant, so their AUROC is 0.5.
CONSTANT_SCORE_STD = 1e-6


@dataclass(frozen=True)
class Gram:
    """Centred training activations of a batch of layers and their Gram matrices (float64)."""

    mean: torch.Tensor  # [L, D] float32, the training mean per layer
    kernel: torch.Tensor  # [L, n, n] float64


@dataclass(frozen=True)
class Probes:
    """One linear probe per layer: score = x·coef + intercept (sklearn's decision_function).

    Scores are computed around the training mean, (x − mean)·coef + offset, so float32 products stay accurate.
    """

    coef: torch.Tensor  # [L, D] float32
    mean: torch.Tensor  # [L, D] float32
    offset: torch.Tensor  # [L] float64, the intercept in the centred frame
    n_iter: int

    @property
    def intercept(self) -> torch.Tensor:
        return self.offset - (self.coef.double() * self.mean.double()).sum(-1)

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [L, m] for activations [L, m, D]."""
        centred = x - self.mean[:, None, :]
        return torch.bmm(centred, self.coef[:, :, None]).squeeze(-1).double() + self.offset[:, None]


def gram(x_train: torch.Tensor) -> Gram:
    """Centre [L, n, D] activations per layer and form K = X꜀X꜀ᵀ (float32 products, float64 result).

    Centring first keeps the float32 products accurate: the large shared mean never enters them.
    """
    mean = x_train.mean(dim=1)
    centred = x_train - mean[:, None, :]
    return Gram(mean=mean, kernel=(centred @ centred.mT).double())


def _objective(quad: torch.Tensor, f: torch.Tensor, sign: torch.Tensor, c: float) -> torch.Tensor:
    return 0.5 * quad + c * torch.nn.functional.softplus(-sign * f).sum(-1)


def fit_dual(kernel: torch.Tensor, y: torch.Tensor, c: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Damped Newton on (a, b) for a batch of problems; kernel [B, n, n] float64, y [B, n] in {0, 1}.

    Returns the dual coefficients a [B, n], intercepts b [B] (of the centred problem) and the iterations used.
    Newton system (after cancelling K): Δa + C·W·Δf = −(a + C·g), 1ᵀW·Δf = −1ᵀg, with Δf = KΔa + Δb. It is solved
    through the well-conditioned B = I + C·S·K·S (S = W^½), as in GP-Laplace (Rasmussen & Williams, Alg. 3.1).
    """
    batch, n, _ = kernel.shape
    y = y.double()
    sign = 2 * y - 1
    a = torch.zeros(batch, n, dtype=torch.float64)
    b = torch.zeros(batch, dtype=torch.float64)
    steps = 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=torch.float64)
    active = torch.ones(batch, dtype=torch.bool)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        everyone = bool(active.all())
        idx = active.nonzero().squeeze(1)
        k, aa, bb, yy, ss = (t if everyone else t[idx] for t in (kernel, a, b, y, sign))
        ka = (k @ aa.unsqueeze(-1)).squeeze(-1)
        f = ka + bb[:, None]
        p = torch.sigmoid(f)
        g = p - yy
        w = p * (1 - p)
        s = w.sqrt()
        system = k * s[:, :, None]
        system.mul_(s[:, None, :] * c).diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol = torch.linalg.cholesky(system)

        r = aa + c * g
        kr = (k @ r.unsqueeze(-1)).squeeze(-1)
        # (I + C·K·W)⁻¹z = z − C·K·S·B⁻¹·S·z (Woodbury; no division by small weights), for z = −K·r and z = 1
        z = torch.stack([-kr, torch.ones_like(r)], -1)
        solved = z - c * k @ (s[..., None] * torch.cholesky_solve(s[..., None] * z, chol))
        u, v = solved[..., 0], solved[..., 1]
        db = -(g.sum(-1) + (w * u).sum(-1)) / (w * v).sum(-1).clamp_min(1e-300)
        df = u + db[:, None] * v
        da = -r - c * w * df
        slope = (kr * da).sum(-1) + c * g.sum(-1) * db  # directional derivative, < 0

        # Exact line search values: the quadratic term aᵀKa is a polynomial in t, the loss needs f + t·Δf.
        kda = df - db[:, None]
        q0, q1, q2 = (aa * ka).sum(-1), (aa * kda).sum(-1), (da * kda).sum(-1)
        j0 = _objective(q0, f, ss, c)
        t = steps[None, :]
        quad = q0[:, None] + 2 * t * q1[:, None] + t**2 * q2[:, None]
        jt = _objective(quad, f[:, None, :] + t[..., None] * df[:, None, :], ss[:, None, :], c)
        ok = jt <= j0[:, None] + ARMIJO * t * slope[:, None]
        first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.full_like(idx, LINE_SEARCH_STEPS - 1))
        step = steps[first]
        moved = ok.any(-1)
        a[idx] = torch.where(moved[:, None], aa + step[:, None] * da, aa)
        b[idx] = torch.where(moved, bb + step * db, bb)
        converged = (-slope / 2 <= DECREMENT_TOL * n) | ~moved
        active[idx[converged]] = False
        if not active.any():
            break
    return a, b, iterations


def fit_probes(x_train: torch.Tensor, y: torch.Tensor, c: float, max_iter: int, grams: Gram | None = None) -> Probes:
    """Fit one probe per layer on [L, n, D] activations with labels y [n] or [L, n]."""
    grams = grams or gram(x_train)
    n_layers = x_train.shape[0]
    labels = y.expand(n_layers, -1) if y.dim() == 1 else y
    a, b, iterations = fit_dual(grams.kernel, labels, c, max_iter)
    return probes_from_dual(x_train, grams, a, b, iterations)


def probes_from_dual(x_train: torch.Tensor, grams: Gram, a: torch.Tensor, b: torch.Tensor, n_iter: int) -> Probes:
    """w = X꜀ᵀa = Xᵀa − mean·Σa per layer (Σa = 0 at the optimum: the intercept's stationarity)."""
    a32 = a.float()
    coef = torch.bmm(a32[:, None, :], x_train).squeeze(1) - grams.mean * a32.sum(-1, keepdim=True)
    return Probes(coef=coef, mean=grams.mean, offset=b, n_iter=n_iter)


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of each column of scores [m, L] (or a vector) against binary y [m]; Mann–Whitney with tied ranks."""
    scores = np.asarray(scores, dtype=np.float64)
    squeeze = scores.ndim == 1
    scores = scores[:, None] if squeeze else scores
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(scores, axis=0)
    out = (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out[0] if squeeze else out


def permuted_labels(y: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """The study's label shuffles: `RandomState(seed).permutation(y)` once per permutation, [n_perm, m]."""
    rng = np.random.RandomState(seed)
    return np.stack([rng.permutation(y) for _ in range(n_permutations)])


def permutation_aurocs(scores: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """AUROC [n_perm, L] of fixed scores [m, L] under each row of permuted labels [n_perm, m], as one matmul."""
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=0)
    n_pos = int(perms[0].sum())
    n_neg = perms.shape[1] - n_pos
    return (perms.astype(np.float64) @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def permutation_p(observed: float, null: np.ndarray) -> float:
    """(#{null ≥ observed} + 1) / (n + 1): the smallest possible value is 1/(n + 1)."""
    return float((np.sum(null >= observed) + 1) / (len(null) + 1))


def bootstrap_draws(y: np.ndarray, n_iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified resamples (positives and negatives separately, with replacement) as multiplicity counts.

    Returns counts [B, n_pos] and [B, n_neg] over the positives and negatives in their original order.
    """
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rng = np.random.RandomState(seed)
    pos = np.zeros((n_iterations, n_pos))
    neg = np.zeros((n_iterations, n_neg))
    for i in range(n_iterations):
        pos[i] = np.bincount(rng.randint(0, n_pos, n_pos), minlength=n_pos)
        neg[i] = np.bincount(rng.randint(0, n_neg, n_neg), minlength=n_neg)
    return pos, neg


def bootstrap_aurocs(scores: np.ndarray, y: np.ndarray, n_iterations: int, seed: int) -> np.ndarray:
    """AUROC [B, L] of every stratified resample for scores [m, L]; the same resamples for every layer."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    pos_counts, neg_counts = bootstrap_draws(y, n_iterations, seed)
    sp, sn = scores[y], scores[~y]  # [n_pos, L], [n_neg, L]
    wins = (sp[:, None, :] > sn[None, :, :]) + 0.5 * (sp[:, None, :] == sn[None, :, :])  # [n_pos, n_neg, L]
    return np.einsum("bi,ijl,bj->bl", pos_counts, wins, neg_counts, optimize=True) / (len(sp) * len(sn))


def bootstrap_ci(scores: np.ndarray, y: np.ndarray, n_iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2.5 / 97.5 percentiles of the stratified bootstrap AUROC per layer."""
    boots = bootstrap_aurocs(scores, y, n_iterations, seed)
    return np.percentile(boots, 2.5, axis=0), np.percentile(boots, 97.5, axis=0)


def constant_safe_auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """AUROC, or 0.5 when the predictions are constant (the study's ablation rule)."""
    scores = np.asarray(scores, dtype=np.float64)
    return 0.5 if scores.std() < CONSTANT_SCORE_STD else float(auroc(scores, y))


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine with the study's 1e-8 guard: dot / (‖a‖‖b‖ + 1e-8)."""
    a, b = a.double(), b.double()
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-8)).numpy()
