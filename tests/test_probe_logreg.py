"""The batched dual-Newton probe and the vectorised AUROC statistics against sklearn / plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sycorec.probe import synthetic
from sycorec.probe.logreg import (
    auroc,
    bootstrap_aurocs,
    bootstrap_draws,
    fit_probes,
    permutation_aurocs,
    permutation_p,
    permuted_labels,
    symmetric_gram,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batched LAPACK calls are latency-bound here; extra threads only contend on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
