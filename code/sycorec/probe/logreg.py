"""L2 logistic regression solved exactly in the dual, and rank-based AUROC statistics, to sklearn's settings.

The study fits `LogisticRegression(C, penalty="l2", solver="lbfgs")` on raw activations, one layer at a time. It
minimises ½‖w‖² + C·Σ log(1 + exp(−yᵢ(xᵢ·w + b))) with an unpenalised intercept. With n ≪ d the optimum lies in
the span of the (centred) training rows, w = X꜀ᵀa, so Newton's method runs on the n dual coefficients with the Gram
matrix K = X꜀X꜀ᵀ; centring is exact here because the intercept absorbs the mean. The d-dimensional data is touched
twice per layer (one float32 GEMM for K, one product for w); everything else is n×n float64 work.

Layers are solved one at a time on purpose: a 400×400 system and its factor stay in cache, and torch's batched
Cholesky on CPU copies and re-triangularises the whole batch each step (measured ~1.7× slower per matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from scipy.stats import rankdata

ARMIJO = 1e-4
LINE_SEARCH_STEPS = 30
# Newton stops when the primal gradient ‖(∇w, ∂b)‖₂ is below this; then J − J* ≤ ‖∇‖²/2 ≈ 5e-11 (the ridge makes
# J 1-strongly convex in w). sklearn's lbfgs scales J by 1/(C·n), so its default tol = 1e-4 on max|∇| is 0.04 here.
GRAD_TOL = 1e-5
# The study's rule: predictions with std below this are constant, so their AUROC is 0.5.
CONSTANT_SCORE_STD = 1e-6


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


@dataclass(frozen=True)
class LayerFit:
    """Probes for k label vectors on one layer's training rows."""

    mean: torch.Tensor  # [D], the training mean (in the rows' dtype)
    offset: torch.Tensor  # [k] float64, intercepts in the centred frame
    coef: torch.Tensor  # [k, D] float32, w = X꜀ᵀa
    n_iter: int  # the most Newton steps any of the k fits took


def symmetric_gram(rows: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """R·Rᵀ from the block lower triangle only (torch has no SYRK): ~(blocks + 1)/(2·blocks) of a full GEMM."""
    n = rows.shape[0]
    edges = [round(n * i / blocks) for i in range(blocks + 1)]
    out = torch.empty(n, n, dtype=rows.dtype)
    for lo, hi in pairwise(edges):
        strip = rows[lo:hi] @ rows[:hi].T
        out[lo:hi, :hi] = strip
        out[:lo, lo:hi] = strip[:, :lo].T
    return out


def centred_gram(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre [n, D] rows and form K = X꜀X꜀ᵀ in the rows' dtype (float32: one SGEMM), float64 result.

    Centring first keeps float32 products accurate: the large shared mean (and outlier dimensions) never enter
    them. Returns the centred rows, the mean and K.
    """
    mean = x_train.mean(dim=0)
    centred = x_train - mean
    return centred, mean, symmetric_gram(centred).double()


def _objective(quad: torch.Tensor, f: torch.Tensor, sign: torch.Tensor, c: float) -> torch.Tensor:
    return 0.5 * quad + c * torch.nn.functional.softplus(-sign * f).sum(-1)


def objective(kernel: torch.Tensor, dual: torch.Tensor, offset: torch.Tensor, y: torch.Tensor, c: float) -> float:
    """The primal objective ½‖w‖² + C·Σ log(1 + exp(−yᵢfᵢ)) of a dual solution (w = X꜀ᵀa, f = Ka + b)."""
    ka = kernel @ dual
    return float(_objective(dual @ ka, ka + offset, 2 * y.double() - 1, c))


@dataclass(frozen=True)
class _Workspace:
    """Reused n×n buffers: fresh megabyte-sized tensors each Newton step cost page faults, not arithmetic."""

    system: torch.Tensor
    chol: torch.Tensor  # column-major, the layout LAPACK writes

    @classmethod
    def of(cls, n: int) -> _Workspace:
        f64 = torch.float64
        return cls(system=torch.empty(n, n, dtype=f64), chol=torch.empty_strided((n, n), (1, n), dtype=f64))


def _newton(
    kernel: torch.Tensor, y: torch.Tensor, c: float, max_iter: int, first: dict[float, torch.Tensor], work: _Workspace
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Damped Newton on (a, b) for one problem; kernel [n, n] float64, y [n] float64 in {0, 1}.

    Newton system (after cancelling K): Δa + C·W·Δf = −(a + C·g), 1ᵀW·Δf = −1ᵀg, with Δf = KΔa + Δb. It is solved
    through the well-conditioned B = I + C·S·K·S (S = W^½), as in GP-Laplace (Rasmussen & Williams, Alg. 3.1).
    The start a = 0, b = logit(ȳ) has uniform weights, so its factor depends only on ȳ: `first` caches it for the
    other label vectors of the same layer (random-label controls keep ȳ).
    """
    n = y.shape[0]
    sign = 2 * y - 1
    ybar = min(max(float(y.mean()), 1e-12), 1 - 1e-12)
    a = torch.zeros(n, dtype=torch.float64)
    ka = torch.zeros(n, dtype=torch.float64)
    b = torch.tensor(math.log(ybar / (1 - ybar)), dtype=torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    steps = 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=torch.float64)
    for iteration in range(max_iter):
        f = ka + b
        p = torch.sigmoid(f)
        g = p - y
        w = p * (1 - p)
        s = w.sqrt()
        r = a + c * g
        kr = kernel @ r
        g_sum = g.sum()
        if float(r @ kr + (c * g_sum) ** 2) <= GRAD_TOL**2:  # ‖X꜀ᵀr‖² + (∂b)²: the primal gradient
            return a, b, iteration
        chol = first.get(ybar) if iteration == 0 else None
        if chol is None:
            torch.mul(kernel, s[:, None], out=work.system)
            work.system.mul_(c * s[None, :]).diagonal().add_(1.0)
            chol = torch.linalg.cholesky(work.system, out=work.chol)
            if iteration == 0:
                first[ybar] = chol.clone()
        # (I + C·K·W)⁻¹z = z − C·K·S·B⁻¹·S·z (Woodbury; no division by small weights), for z = −K·r and z = 1
        z = torch.stack([-kr, ones], -1)
        half = torch.linalg.solve_triangular(chol, s[:, None] * z, upper=False)  # (cholesky_solve copies the factor)
        inner = s[:, None] * torch.linalg.solve_triangular(chol.mT, half, upper=True)
        u = -kr - c * (kernel @ inner[:, 0])
        v = ones - c * (kernel @ inner[:, 1])
        db = -(g_sum + w @ u) / (w @ v).clamp_min(1e-300)
        df = u + db * v
        da = -r - c * w * df
        slope = kr @ da + c * g_sum * db  # directional derivative, < 0

        # Exact line search values: the quadratic term aᵀKa is a polynomial in t, the loss needs f + t·Δf.
        kda = df - db
        q0, q1, q2 = a @ ka, a @ kda, da @ kda
        j0 = _objective(q0, f, sign, c)
        jt = _objective(q0 + 2 * steps * q1 + steps**2 * q2, f + steps[:, None] * df, sign, c)
        ok = jt <= j0 + ARMIJO * steps * slope
        if not bool(ok.any()):  # no decrease left at float64 precision
            return a, b, iteration
        t = steps[int(ok.to(torch.uint8).argmax())]
        a = a + t * da
        b = b + t * db
        ka = kernel @ a
    return a, b, max_iter


def fit_dual(
    kernel: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit k problems sharing one kernel [n, n] float64; labels [k, n] in {0, 1}.

    Returns the dual coefficients a [k, n], intercepts b [k] (of the centred problem) and the most Newton steps used.
    """
    labels = labels.double()
    first: dict[float, torch.Tensor] = {}
    work = _Workspace.of(kernel.shape[-1])
    fits = [_newton(kernel, y, c, max_iter, first, work) for y in labels]
    return torch.stack([f[0] for f in fits]), torch.stack([f[1] for f in fits]), max(f[2] for f in fits)


def fit_layer(x_train: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int) -> LayerFit:
    """Fit one probe per label vector (labels [k, n]) on one layer's rows [n, D]; all k share one Gram matrix."""
    centred, mean, kernel = centred_gram(x_train)
    a, b, n_iter = fit_dual(kernel, labels, c, max_iter)
    coef = (a.to(centred.dtype) @ centred).float()  # w = X꜀ᵀa
    return LayerFit(mean=mean, offset=b, coef=coef, n_iter=n_iter)


def fit_probes(x_train: torch.Tensor, y: torch.Tensor, c: float, max_iter: int) -> Probes:
    """Fit one probe per layer on [L, n, D] activations with labels y [n] or [L, n]."""
    n_layers = x_train.shape[0]
    labels = y.expand(n_layers, -1) if y.dim() == 1 else y
    fits = [fit_layer(x_train[layer], labels[layer][None], c, max_iter) for layer in range(n_layers)]
    return Probes(
        coef=torch.stack([f.coef[0] for f in fits]),
        mean=torch.stack([f.mean for f in fits]),
        offset=torch.stack([f.offset[0] for f in fits]),
        n_iter=max(f.n_iter for f in fits),
    )


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
