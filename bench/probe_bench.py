"""Probe analysis speed at the study's shape: batched dual Newton vs a per-layer sklearn lbfgs loop.

Synthetic activations: 6 models × 36 layers × 4096-d × 500 prompts (two per question, ~400 train / ~100 val), with
control (3 seeds), 200 bootstraps, 200 maxT permutations and ablation, all with the study's settings (C = 1, L2,
lbfgs, max_iter 2000, no scaling). The sklearn baseline runs on `--baseline-layers` evenly spaced layers of every
model and its per-layer work is scaled linearly to 36 layers (the full loop takes well over 10 minutes on a CPU);
the ablation refits are single-layer and measured in full. Both sides run on one thread.

    python bench/probe_bench.py [--baseline-layers 4] [--converged-layers 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from sycorec.probe import synthetic
from sycorec.probe.analysis import Settings, analyze
from sycorec.probe.logreg import bootstrap_draws, permuted_labels
from sycorec.probe.prompts import PromptSplit, grouped_split

MODELS = ["base", "sft", "dpo", "simpo", "ipo", "grpo_v3"]
REFERENCE = "sft"
N, LAYERS, HIDDEN = 500, 36, 4096
# Residual-stream norms of an 8B model's middle layers are around 100; SCALE = 5 gives synthetic rows of that size.
SCALE = 5.0
SETTINGS = Settings(
    c=1.0, max_iter=2000, bootstrap_iterations=200, permutations=200, control_seeds=3, ablation_alpha=1.0, seed=42
)


def build() -> tuple[PromptSplit, dict[str, torch.Tensor]]:
    groups = [f"q{i // 2}" for i in range(N)]
    split = np.array(grouped_split(groups, 0.2, seed=42))
    shared = synthetic.unit_directions(LAYERS, HIDDEN, seed=100)
    layers = np.arange(LAYERS)
    labels, acts = {}, {}
    for i, model in enumerate(MODELS):
        labels[model] = synthetic.labels(N, 0.35 + 0.05 * i, seed=10 + i)
        # a bump of signal around a model-specific layer; half the models share the reference's direction
        signal = SCALE * (0.15 + 0.05 * i) * np.exp(-(((layers - 12 - 2 * i) / 6.0) ** 2))
        direction = shared if i % 2 else synthetic.unit_directions(LAYERS, HIDDEN, seed=200 + i)
        acts[model] = synthetic.activations(
            labels[model],
            signal,
            direction,
            model_seed=i + 1,
            mean_scale=0.2 * SCALE,
            factor_scale=0.1 * SCALE,
            noise_scale=0.05 * SCALE,
        )
    return PromptSplit(
        item_ids=[str(i) for i in range(N)],
        train=np.flatnonzero(split == "train"),
        val=np.flatnonzero(split == "val"),
        labels=labels,
    ), acts


def sk_fit(x: np.ndarray, y: np.ndarray, seed: int = 42, tol: float = 1e-4) -> LogisticRegression:
    return LogisticRegression(C=SETTINGS.c, max_iter=SETTINGS.max_iter, random_state=seed, tol=tol).fit(x, y)


def sk_bootstrap(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos_counts, neg_counts = bootstrap_draws(y, SETTINGS.bootstrap_iterations, SETTINGS.seed)
    aucs = []
    for cp, cn in zip(pos_counts, neg_counts, strict=True):
        idx = np.concatenate([np.repeat(pos, cp.astype(int)), np.repeat(neg, cn.astype(int))])
        aucs.append(roc_auc_score(y[idx], p[idx]))
    return float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))


def baseline(split: PromptSplit, acts: dict[str, torch.Tensor], layers: list[int], peaks: dict[str, int]) -> dict:
    """The per-layer sklearn loop on `layers`; returns timings and the AUROCs it found."""
    tr, va = split.train, split.val
    found: dict[str, float] = {}
    t0 = time.perf_counter()
    ref_probes = {}
    for model in MODELS:
        x, y = acts[model].numpy(), split.labels[model]
        for layer in layers:
            clf = sk_fit(x[layer, tr], y[tr])
            p = clf.predict_proba(x[layer, va])[:, 1]
            found[f"own/{model}/{layer}"] = roc_auc_score(y[va], p)
            sk_bootstrap(y[va], p)
            if model == REFERENCE:
                ref_probes[layer] = clf
        if model == REFERENCE:
            for seed in range(SETTINGS.control_seeds):
                shuffled = np.random.RandomState(seed).permutation(y[tr])
                for layer in layers:
                    p = sk_fit(x[layer, tr], shuffled, seed=seed).predict_proba(x[layer, va])[:, 1]
                    found[f"control/{seed}/{layer}"] = roc_auc_score(y[va], p)
    for model in MODELS:
        if model == REFERENCE:
            continue
        x, y = acts[model].numpy(), split.labels[model]
        probs = {}
        for layer in layers:
            probs[layer] = p = ref_probes[layer].predict_proba(x[layer, va])[:, 1]
            found[f"transfer/{model}/{layer}"] = roc_auc_score(y[va], p)
            sk_bootstrap(y[va], p)
        for perm in permuted_labels(y[va], SETTINGS.permutations, SETTINGS.seed):
            max(roc_auc_score(perm, probs[layer]) for layer in layers)
    layerwise = time.perf_counter() - t0
    t1 = time.perf_counter()
    for model in MODELS:
        x, y = acts[model].numpy(), split.labels[model]
        layer = peaks[model]
        clf = sk_fit(x[layer, tr], y[tr])
        d = clf.coef_[0] / np.linalg.norm(clf.coef_[0])
        xt, xv = x[layer, tr] - np.outer(x[layer, tr] @ d, d), x[layer, va] - np.outer(x[layer, va] @ d, d)
        found[f"ablation/{model}"] = roc_auc_score(y[va], sk_fit(xt, y[tr]).predict_proba(xv)[:, 1])
    return {"layerwise_s": layerwise, "ablation_s": time.perf_counter() - t1, "auroc": found}


def ours_auroc(results: dict, layers: list[int]) -> dict[str, float]:
    out = {}
    for model in MODELS:
        for layer in layers:
            out[f"own/{model}/{layer}"] = results["per_model"][model]["per_layer"]["auroc"][layer]
            if model != REFERENCE:
                out[f"transfer/{model}/{layer}"] = results["transfer"][model]["per_layer"]["auroc"][layer]
        out[f"ablation/{model}"] = results["ablation"][model]["auroc_retrained"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-layers", type=int, default=4, help="layers the sklearn loop runs on (36 = all)")
    parser.add_argument("--converged-layers", type=int, default=2, help="reference layers refit with tol=1e-10")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        t = time.perf_counter()
        split, acts = build()
        print(
            f"synthetic activations: {len(MODELS)} models × {LAYERS} layers × {N} prompts × {HIDDEN}-d "
            f"({len(split.train)} train / {len(split.val)} val), mean row norm "
            f"{acts[REFERENCE][LAYERS // 2].norm(dim=-1).mean():.0f}, built in {time.perf_counter() - t:.1f} s"
        )

        t = time.perf_counter()
        results = analyze(acts.__getitem__, split, MODELS, REFERENCE, SETTINGS)
        ours_s = time.perf_counter() - t
        print(f"batched dual-Newton analysis (everything, all {LAYERS} layers): {ours_s:.1f} s")

        layers = np.linspace(0, LAYERS - 1, args.baseline_layers).round().astype(int).tolist()
        peaks = {m: results["per_model"][m]["peak_layer"] for m in MODELS}
        base = baseline(split, acts, layers, peaks)
        scale = LAYERS / len(layers)
        base_s = base["layerwise_s"] * scale + base["ablation_s"]
        print(
            f"sklearn lbfgs loop: measured {base['layerwise_s']:.1f} s on layers {layers} of every model "
            f"(own fits + bootstraps, control, transfer + bootstraps + permutations), scaled ×{scale:.1f} "
            f"to {LAYERS} layers, plus {base['ablation_s']:.1f} s ablation refits (all 6, measured) "
            f"= {base_s:.1f} s estimated"
        )
        print(f"speed-up: {base_s / ours_s:.1f}×")

        ours = ours_auroc(results, layers)
        diffs = {k: abs(ours[k] - v) for k, v in base["auroc"].items() if k in ours}
        worst = max(diffs, key=diffs.get)
        ctrl = results["control"]["per_layer_mean"]
        ctrl_diff = max(
            abs(ctrl[layer] - np.mean([base["auroc"][f"control/{s}/{layer}"] for s in range(SETTINGS.control_seeds)]))
            for layer in layers
        )
        print(
            f"largest AUROC difference vs sklearn (default tol=1e-4), {len(diffs)} values: "
            f"{diffs[worst]:.4f} ({worst}); control per-layer mean: {ctrl_diff:.4f}"
        )

        x, y = acts[REFERENCE].numpy(), split.labels[REFERENCE]
        worst_converged = 0.0
        for layer in layers[: args.converged_layers]:
            clf = sk_fit(x[layer, split.train], y[split.train], tol=1e-10)
            auc = roc_auc_score(y[split.val], clf.decision_function(x[layer, split.val]))
            worst_converged = max(worst_converged, abs(auc - ours[f"own/{REFERENCE}/{layer}"]))
        print(
            f"largest AUROC difference vs sklearn run to convergence (tol=1e-10) on {REFERENCE} layers "
            f"{layers[: args.converged_layers]}: {worst_converged:.4f}"
        )


if __name__ == "__main__":
    main()
