"""L2 logistic regression solved exactly in the dual, and rank-based AUROC statistics, to sklearn's settings.

The study fits `LogisticRegression(C, penalty="l2", solver="lbfgs")` on raw activations, one layer at a time. It
minimises ½‖w‖² + C·Σ log(1 + exp(−yᵢ(xᵢ·w + b))) with an unpenalised intercept. With n ≪ d the optimum lies in
the span of the (centred) training rows, w = X꜀ᵀa, so Newton's method runs on the n dual coefficients with the Gram
matrix K = X꜀X꜀ᵀ; centring is exact here because the intercept absorbs the mean. The d-dimensional data is touched
twice per layer (one float32 SYRK for K, one product for w); everything else is n×n work in numpy/LAPACK.

Each Newton step costs one Cholesky factorisation of an n×n system, so the solver keeps their number and price low:
- an exact line search along the Newton direction (a few O(n) 1-D Newton steps): with n < d the classes are
  nearly separable and a full Newton step grows the margins by only ~1, so the best step is often 2–4× longer;
  this saves about a third of the factorisations;
- the factorisation runs in float32 (SPOTRF, ~0.6× the time of DPOTRF at n = 400) and one step of iterative
  refinement against the float64 system restores float64-grade solves; float64 takes over where float32 fails or
  is too coarse (activations of extreme scale);
- the first step's system depends only on K and the label balance, so the random-label controls reuse it;
- scipy's LAPACK runs single-threaded on these n×n systems (threads only wait on each other at this size).
Convergence is always judged on the float64 primal gradient. Layers are solved one at a time: a 400×400 system
and its factor stay in cache, and per-step overhead, not arithmetic, dominates batched alternatives.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import lapack
from scipy.special import expit
from scipy.stats import rankdata
from threadpoolctl import ThreadpoolController

ARMIJO = 1e-4
BACKTRACKING_STEPS = 30  # halvings of an exact-line-search step that fails the Armijo test (rare)
LINE_SEARCH_ITERATIONS = 20  # 1-D Newton steps on φ'(t) = 0; 3–8 are typical
LINE_SEARCH_RTOL = 1e-3  # the step length needs no more: the next Newton step corrects it
# A float32 factor whose refinement moves the solution by more than this is too coarse (κ(B)·2⁻²⁴ ≳ REFINE_TOL;
# the bench's problems reach 6e-4): the refined solve would still be off by ~REFINE_TOL², which the Newton
# update's cancellation amplifies. Such problems are factored in float64.
REFINE_TOL = 1e-3
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

    def decision(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [L, m] for activations [L, m, D], or for the rows `rows` (int64 [m]) of activations [L, N, D].

        Layer by layer: whole-model temporaries ([L, m, D] copies) cost more in page faults than in arithmetic.
        """
        scores = []
        for layer, h in enumerate(x):
            h = h if rows is None else h.index_select(0, rows)
            scores.append((h - self.mean[layer]) @ self.coef[layer])
        return torch.stack(scores).double() + self.offset[:, None]


@dataclass(frozen=True)
class LayerFit:
    """Probes for k label vectors on one layer's training rows."""

    mean: torch.Tensor  # [D], the training mean (in the rows' dtype)
    offset: torch.Tensor  # [k] float64, intercepts in the centred frame
    coef: torch.Tensor  # [k, D] float32, w = X꜀ᵀa
    n_iter: int  # the most Newton steps any of the k fits took


def symmetric_gram(rows: torch.Tensor) -> torch.Tensor:
    """R·Rᵀ as one BLAS SYRK, half the flops of a GEMM: numpy sends `A @ A.T` to SYRK (torch has none)."""
    r = rows.contiguous().numpy()
    return torch.from_numpy(r @ r.T)


def centred_gram(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre [n, D] rows and form K = X꜀X꜀ᵀ in the rows' dtype (float32: one SSYRK), float64 result.

    Centring first keeps float32 products accurate: the large shared mean (and outlier dimensions) never enter
    them. Returns the centred rows, the mean and K.
    """
    mean = x_train.mean(dim=0)
    centred = x_train - mean
    return centred, mean, symmetric_gram(centred).double()


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def objective(kernel: torch.Tensor, dual: torch.Tensor, offset: torch.Tensor, y: torch.Tensor, c: float) -> float:
    """The primal objective ½‖w‖² + C·Σ log(1 + exp(−yᵢfᵢ)) of a dual solution (w = X꜀ᵀa, f = Ka + b)."""
    k, a = kernel.double().numpy(), dual.double().numpy()
    ka = k @ a
    sign = 2 * y.double().numpy() - 1
    return float(0.5 * a @ ka + c * _softplus(-sign * (ka + float(offset))).sum())


Factor = tuple[np.ndarray, Callable]  # a lower Cholesky factor and the LAPACK ?potrs that solves with it


class _System:
    """Cholesky factors of B = I + C·S·K·S (S = W^½) for one kernel, in reused buffers (fresh megabyte-sized
    arrays every step cost page faults, not arithmetic)."""

    def __init__(self, kernel: np.ndarray, c: float) -> None:
        self.kernel, self.kernel32, self.c = kernel, kernel.astype(np.float32), c
        self.buffers = {k.dtype: np.empty_like(k, order="F") for k in (self.kernel, self.kernel32)}
        self.first: dict[float, Factor] = {}  # label balance -> the first Newton step's factor

    def factor(self, s: np.ndarray, precise: bool) -> Factor:
        """Factor B: in float32 unless `precise` or float32 fails, else in float64."""
        kinds = [(self.kernel, lapack.dpotrf, lapack.dpotrs)]
        if not precise:
            kinds.insert(0, (self.kernel32, lapack.spotrf, lapack.spotrs))
        for kernel, potrf, potrs in kinds:
            out = self.buffers[kernel.dtype]
            # K is symmetric, so K.T is the Fortran-ordered matrix LAPACK wants, without a transposing copy.
            np.multiply(kernel.T, (self.c * s).astype(kernel.dtype)[:, None], out=out)
            np.multiply(out, s.astype(kernel.dtype), out=out)
            out.flat[:: out.shape[0] + 1] += 1.0
            chol, info = potrf(out, lower=1, overwrite_a=1, clean=0)
            if info == 0:
                return chol, potrs
        raise FloatingPointError("the Newton system is not positive definite (non-finite activations?)")

    def solve(self, factor: Factor, s: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
        """B⁻¹·rhs from the factor, plus one refinement step with the float64 residual, which lifts a float32
        solve to float64 grade (the Newton update subtracts nearly equal terms, so it needs that accuracy).

        None when a float32 factor is too coarse for B (ill-conditioned: activations of extreme scale), seen as a
        refinement that still corrects more than REFINE_TOL of the solution.
        """
        chol, potrs = factor
        x = potrs(chol, rhs, lower=1)[0].astype(np.float64)
        residual = rhs - x - self.c * s[:, None] * (self.kernel @ (s[:, None] * x))
        correction = potrs(chol, residual, lower=1)[0]
        if chol.dtype == np.float32 and not np.linalg.norm(correction) <= REFINE_TOL * np.linalg.norm(x):
            return None
        return x + correction


def _line_search(q1: float, q2: float, m0: np.ndarray, dm: np.ndarray, c: float) -> float:
    """t ≈ argmin φ(t) = ½(2t·q1 + t²·q2) + C·Σ softplus(−(m0 + t·dm)), i.e. J along the Newton direction.

    φ is convex, so Newton's method on φ'(t) = 0 from the full step t = 1 (halving at most per iteration) finds it
    in a few O(n) iterations.
    """
    t = 1.0
    for _ in range(LINE_SEARCH_ITERATIONS):
        q = expit(-(m0 + t * dm))  # σ(−m)
        d1 = q1 + t * q2 - c * (q @ dm)
        d2 = q2 + c * ((q * (1 - q)) @ (dm * dm))
        if not d2 > 0:  # φ flat to float64 precision here
            return t
        new = max(t - d1 / d2, 0.5 * t)
        if abs(new - t) <= LINE_SEARCH_RTOL * t:
            return new
        t = new
    return t


def _newton(system: _System, y: np.ndarray, max_iter: int) -> tuple[np.ndarray, float, int]:
    """Newton's method with exact line search on (a, b) for one problem; y [n] float64 in {0, 1}.

    Newton system (after cancelling K): Δa + C·W·Δf = −(a + C·g), 1ᵀW·Δf = −1ᵀg, with Δf = KΔa + Δb. It is solved
    through the well-conditioned B = I + C·S·K·S (S = W^½), as in GP-Laplace (Rasmussen & Williams, Alg. 3.1).
    The start a = 0, b = logit(ȳ) has uniform weights, so its factor depends only on ȳ and is cached.
    """
    kernel, c = system.kernel, system.c
    n = y.shape[0]
    sign = 2 * y - 1
    ybar = min(max(float(y.mean()), 1e-12), 1 - 1e-12)
    a, ka = np.zeros(n), np.zeros(n)
    b = math.log(ybar / (1 - ybar))
    rhs = np.empty((n, 2))
    precise = False  # float64 factors only, once float32 proved too coarse
    for iteration in range(max_iter):
        f = ka + b
        p = expit(f)
        g = p - y
        w = p * (1 - p)
        s = np.sqrt(w)
        r = a + c * g
        kr = kernel @ r
        g_sum = g.sum()
        if r @ kr + (c * g_sum) ** 2 <= GRAD_TOL**2:  # ‖X꜀ᵀr‖² + (∂b)²: the primal gradient
            return a, b, iteration
        # (I + C·K·W)⁻¹z = z − C·K·S·B⁻¹·S·z (Woodbury; no division by small weights), for z = −K·r and z = 1
        rhs[:, 0], rhs[:, 1] = -s * kr, s
        cached = iteration == 0 and ybar in system.first
        factor = system.first[ybar] if cached else system.factor(s, precise)
        solved = system.solve(factor, s, rhs)
        if solved is None:  # float32 is too coarse for this problem: float64 from here on
            precise = True
            factor = system.factor(s, precise)
            solved = system.solve(factor, s, rhs)
        if iteration == 0 and not cached:
            system.first[ybar] = (factor[0].copy(order="F"), factor[1])
        k_inner = kernel @ (s[:, None] * solved)
        u = -kr - c * k_inner[:, 0]
        v = 1 - c * k_inner[:, 1]
        db = -(g_sum + w @ u) / max(w @ v, 1e-300)
        df = u + db * v
        da = -r - c * w * df

        # J along the direction: the quadratic term aᵀKa is a polynomial in t, the loss needs the margins m0 + t·dm.
        kda = df - db
        q0, q1, q2 = a @ ka, a @ kda, da @ kda
        m0, dm = sign * f, sign * df
        slope = q1 - c * (expit(-m0) @ dm)  # φ'(0), < 0
        if not slope < 0:
            if precise:  # no decrease left at float64 precision
                return a, b, iteration
            precise = True  # a float32-factored direction that fails to descend: retry in float64
            continue
        j0 = 0.5 * q0 + c * _softplus(-m0).sum()
        t = _line_search(q1, q2, m0, dm, c)
        for _ in range(BACKTRACKING_STEPS):
            if 0.5 * (q0 + 2 * t * q1 + t * t * q2) + c * _softplus(-(m0 + t * dm)).sum() <= j0 + ARMIJO * t * slope:
                break
            t *= 0.5
        else:
            return a, b, iteration  # no decrease left at float64 precision
        a = a + t * da
        b = b + t * db
        ka = kernel @ a
    return a, b, max_iter


@functools.cache
def _blas() -> ThreadpoolController:
    """The loaded BLAS libraries, found once (a fresh search per call costs ~1 ms)."""
    return ThreadpoolController()


def fit_dual(
    kernel: torch.Tensor, labels: torch.Tensor, c: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit k problems sharing one kernel [n, n] float64; labels [k, n] in {0, 1}.

    Returns the dual coefficients a [k, n], intercepts b [k] (of the centred problem) and the most Newton steps used.
    """
    system = _System(np.ascontiguousarray(kernel.double().numpy()), c)
    with _blas().limit(limits=1, user_api="blas"):  # n×n work: extra BLAS threads only wait on each other
        fits = [_newton(system, y, max_iter) for y in labels.double().numpy()]
    a = torch.from_numpy(np.stack([f[0] for f in fits]))
    return a, torch.tensor([f[1] for f in fits], dtype=torch.float64), max(f[2] for f in fits)


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
    by_neg = (pos_counts @ wins.reshape(len(sp), -1)).reshape(n_iterations, len(sn), -1)  # one GEMM over positives
    return np.einsum("bjl,bj->bl", by_neg, neg_counts) / (len(sp) * len(sn))


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
