"""The dual-Newton probe and the vectorised AUROC statistics against sklearn / plain loops."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sycorec.probe import logreg, synthetic
from sycorec.probe.logreg import (
    GRAD_TOL,
    _line_search,
    auroc,
    bootstrap_aurocs,
    bootstrap_draws,
    centred_gram,
    fit_dual,
    fit_probes,
    permutation_aurocs,
    permutation_p,
    permuted_labels,
    symmetric_gram,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("n", "d", "c"), [(40, 120, 1.0), (90, 12, 1.0), (60, 30, 0.3)])
def test_fit_equals_sklearn(n: int, d: int, c: float) -> None:
    rng = np.random.default_rng(n + d)
    layers = 3
    x = rng.normal(size=(layers, n, d)) + rng.normal(size=(layers, 1, d))  # a mean offset per layer
    y = (rng.random(n) < 0.4).astype(np.int64)
    x[:, :, 0] += 1.5 * y
    probes = fit_probes(torch.tensor(x, dtype=torch.float32), torch.from_numpy(y), c, max_iter=100)
    x_val = rng.normal(size=(layers, 30, d)).astype(np.float32)
    ours = probes.decision(torch.from_numpy(x_val)).numpy()
    for layer in range(layers):
        ref = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(x[layer].astype(np.float32), y)
        np.testing.assert_allclose(probes.coef[layer].numpy(), ref.coef_[0], rtol=1e-3, atol=1e-5)
        assert probes.intercept[layer].item() == pytest.approx(ref.intercept_[0], abs=1e-4)
        y_val = (x_val[layer, :, 0] > 0).astype(int)
        assert auroc(ours[layer], y_val) == pytest.approx(roc_auc_score(y_val, ref.decision_function(x_val[layer])))


def test_auroc_with_ties_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(50, 4)).astype(float)  # many ties
    y = rng.integers(0, 2, size=50)
    expected = [roc_auc_score(y, scores[:, j]) for j in range(4)]
    np.testing.assert_allclose(auroc(scores, y), expected)


def test_permutations_and_bootstrap_equal_loops() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(40, 3))
    y = (rng.random(40) < 0.5).astype(int)
    perms = permuted_labels(y, 25, seed=42)
    assert all(sorted(p) == sorted(y) for p in perms)
    loop = [[roc_auc_score(p, scores[:, j]) for j in range(3)] for p in perms]
    np.testing.assert_allclose(permutation_aurocs(scores, perms), loop)

    pos_counts, neg_counts = bootstrap_draws(y, 30, seed=42)
    assert (pos_counts.sum(1) == y.sum()).all() and (neg_counts.sum(1) == (1 - y).sum()).all()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    loop = []
    for cp, cn in zip(pos_counts, neg_counts, strict=True):
        idx = np.concatenate([np.repeat(pos, cp.astype(int)), np.repeat(neg, cn.astype(int))])
        loop.append([roc_auc_score(y[idx], scores[idx, j]) for j in range(3)])
    np.testing.assert_allclose(bootstrap_aurocs(scores, y, 30, seed=42), loop)


def test_permutation_p_floor() -> None:
    null = np.linspace(0.4, 0.6, 200)
    assert permutation_p(0.9, null) == pytest.approx(1 / 201)
    assert permutation_p(0.0, null) == 1.0


def test_symmetric_gram_equals_full_product() -> None:
    rows = torch.randn(37, 20, dtype=torch.float64)
    torch.testing.assert_close(symmetric_gram(rows), rows @ rows.T)


def _objective(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(0.5 * w @ w + np.logaddexp(0, -(2 * y - 1) * (x @ w + b)).sum())


def test_residual_stream_scale_matches_converged_sklearn() -> None:
    """Raw residual-stream-like rows (norms up to hundreds, outlier dimensions, n < d): the same optimum as sklearn
    run to convergence — equal AUROC, and our objective no higher."""
    n, d, layers = 150, 400, 3
    y = synthetic.labels(n, 0.4, seed=3)
    directions = torch.stack([synthetic.unit_directions(layers, d, seed=s) for s in (4, 5)], 1)
    x = synthetic.residual_stream(y, np.array([0.5, 2.0, 1.0]), directions, norms=(40.0, 400.0), rank=16)
    assert 300 < x[-1].norm(dim=-1).mean() < 500
    train, val = np.arange(110), np.arange(110, n)
    probes = fit_probes(x[:, train], torch.from_numpy(y[train]), 1.0, max_iter=100)
    scores = probes.decision(x[:, val]).numpy()
    for layer in range(layers):
        rows = x[layer].numpy().astype(np.float64)
        ref = LogisticRegression(C=1.0, max_iter=100_000, tol=1e-10).fit(x[layer, train].numpy(), y[train])
        ours = _objective(probes.coef[layer].double().numpy(), probes.intercept[layer].item(), rows[train], y[train])
        assert ours <= _objective(ref.coef_[0], ref.intercept_[0], rows[train], y[train]) + 1e-9
        expected = roc_auc_score(y[val], ref.decision_function(x[layer, val].numpy()))
        assert abs(auroc(scores[layer], y[val]) - expected) <= 1e-3


def test_decision_on_selected_rows() -> None:
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(2, 30, 8)), dtype=torch.float32)
    probes = fit_probes(x, torch.from_numpy((rng.random(30) < 0.5).astype(np.int64)), 1.0, max_iter=100)
    rows = torch.tensor([4, 0, 17])
    torch.testing.assert_close(probes.decision(x, rows), probes.decision(x[:, rows]))


def test_line_search_minimises_along_the_direction() -> None:
    """The exact line search lands on argmin J(a + tΔa, b + tΔb), here beyond the full Newton step."""
    rng = np.random.default_rng(4)
    m0, dm, q1, q2 = rng.normal(size=50), rng.normal(size=50) + 0.5, -40.0, 4.0
    phi = lambda t: 0.5 * (2 * t * q1 + t * t * q2) + np.logaddexp(0, -(m0 + t * dm)).sum()  # noqa: E731
    best = minimize_scalar(phi, bounds=(0, 100), method="bounded", options={"xatol": 1e-10}).x
    assert best > 2
    assert _line_search(q1, q2, m0, dm, 1.0) == pytest.approx(best, rel=1e-3)


def _gradient_norm(kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: np.ndarray) -> float:
    """‖(∇w, ∂b)‖ of the primal objective at the dual solution (w = X꜀ᵀa): ‖X꜀ᵀr‖² = rᵀKr with r = a + C·g."""
    k = kernel.numpy()
    g = expit(k @ a.numpy() + b.item()) - y
    r = a.numpy() + g
    return float(np.sqrt(r @ k @ r + g.sum() ** 2))


def _problem(scale: float) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 200))
    y = (rng.random(60) < 0.4).astype(np.int64)
    x[:, 0] += y
    x[:, 1:4] *= 30  # outlier dimensions
    return centred_gram(torch.from_numpy(x * scale))[2], y


def test_extreme_scales_are_factored_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row norms ~1e4 (K up to ~1e8) make the Newton system too ill-conditioned for float32 factors: the solver
    notices (the refinement no longer converges) and still reaches the optimum with float64 factors."""
    calls = {"spotrf": 0, "dpotrf": 0}

    def counting(name: str) -> Callable:
        real = getattr(logreg.lapack, name)

        def factor(matrix: np.ndarray, **kw: int) -> tuple:
            calls[name] += 1
            return real(matrix, **kw)

        return factor

    for name in calls:
        monkeypatch.setattr(logreg.lapack, name, counting(name))
    for scale, float64_used in ((1.0, False), (100.0, True)):
        calls.update(dict.fromkeys(calls, 0))
        kernel, y = _problem(scale)
        a, b, n_iter = fit_dual(kernel, torch.from_numpy(y)[None], 1.0, max_iter=100)
        assert n_iter < 100 and _gradient_norm(kernel, a[0], b[0], y) <= GRAD_TOL
        assert (calls["dpotrf"] > 0) == float64_used and calls["spotrf"] > 0


def test_float32_failure_falls_back_to_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, y = _problem(1.0)
    labels = torch.from_numpy(np.stack([y, y[::-1].copy()]))
    expected = fit_dual(kernel, labels, 1.0, max_iter=100)
    monkeypatch.setattr(logreg.lapack, "spotrf", lambda matrix, **kw: (matrix, 1))  # "not positive definite"
    a, b, _ = fit_dual(kernel, labels, 1.0, max_iter=100)
    torch.testing.assert_close(a, expected[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b, expected[1], rtol=1e-5, atol=1e-7)
