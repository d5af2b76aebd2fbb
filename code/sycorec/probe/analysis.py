"""The study's probing analysis (§E): own-model probes, random-label control, SFT→X transfer with permutation tests,
direction cosines and single-direction ablation.

Activations are streamed one model at a time and each layer's d-dimensional rows are read once into one Gram
matrix; the model's own probe and the random-label controls share it, and the ablation refit is a rank-one update
of it. Only the reference model's probes and every model's probe directions ([L, D] each) outlive a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from tqdm import tqdm

from sycorec.config import Config
from sycorec.errors import DataError
from sycorec.probe.logreg import (
    Probes,
    auroc,
    bootstrap_ci,
    centred_gram,
    constant_safe_auroc,
    cosine,
    fit_dual,
    fit_layer,
    permutation_aurocs,
    permutation_p,
    permuted_labels,
)
from sycorec.probe.prompts import PromptSplit

Loader = Callable[[str], torch.Tensor]  # model name -> activations [L, N, D] float32, rows in prompt-set order


@dataclass(frozen=True)
class Settings:
    c: float
    max_iter: int
    bootstrap_iterations: int
    permutations: int
    control_seeds: int
    ablation_alpha: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        probing = cfg.probing
        return cls(
            c=probing.C,
            max_iter=probing.max_iter,
            bootstrap_iterations=probing.bootstrap_iterations,
            permutations=probing.permutations,
            control_seeds=probing.control_seeds,
            ablation_alpha=probing.ablation_alpha,
            seed=cfg.seed,
        )


def one_class(model: str, y_train: np.ndarray, y_val: np.ndarray) -> str | None:
    """Why no probe can be fitted and scored on these labels, or None."""
    for part, y in (("train", y_train), ("val", y_val)):
        counts = np.bincount(y, minlength=2)
        if counts.min() == 0:
            return f"{model}: the {part} split has {counts[1]} incorrect and {counts[0]} correct answers"
    return None


def unprobeable(split: PromptSplit, models: list[str]) -> str | None:
    """Why the first of `models` that cannot be probed on the split cannot, or None."""
    problems = (one_class(m, split.labels[m][split.train], split.labels[m][split.val]) for m in models)
    return next((p for p in problems if p), None)


def _check_labels(model: str, y_train: np.ndarray, y_val: np.ndarray) -> None:
    if problem := one_class(model, y_train, y_val):
        raise DataError(
            f"{problem}; a probe needs both classes "
            "(raise the run's probing.runs.<run>.max_samples or check the verdicts)"
        )


def _curve(scores: np.ndarray, y: np.ndarray, s: Settings) -> dict:
    """Per-layer AUROC with stratified bootstrap CIs, and the mean/peak summary; scores [m, L]."""
    values = auroc(scores, y)
    lower, upper = bootstrap_ci(scores, y, s.bootstrap_iterations, s.seed)
    peak = int(np.argmax(values))
    return {
        "per_layer": {"auroc": values.tolist(), "ci_lower": lower.tolist(), "ci_upper": upper.tolist()},
        "mean_auroc": float(values.mean()),
        "peak_auroc": float(values[peak]),
        "peak_layer": peak,
    }


@dataclass(frozen=True)
class ModelFit:
    """A model's own probe at every layer, its val scores, and the random-label control scores (reference only)."""

    probes: Probes
    scores: np.ndarray  # [m, L] own-probe val scores
    control_scores: np.ndarray  # [seeds, m, L]; empty for non-reference models


def _index(rows: np.ndarray) -> torch.Tensor:
    """Row indices for `index_select`: ~6× faster than indexing a tensor with a numpy array."""
    return torch.from_numpy(np.asarray(rows, dtype=np.int64))


def control_labels(y_train: np.ndarray, seeds: int) -> np.ndarray:
    """The study's random-label controls: `RandomState(seed).permutation(y_train)` for seed in range(seeds)."""
    shuffled = [np.random.RandomState(seed).permutation(y_train) for seed in range(seeds)]
    return np.stack(shuffled) if shuffled else np.empty((0, len(y_train)), dtype=y_train.dtype)


def fit_model(x: torch.Tensor, y: np.ndarray, split: PromptSplit, s: Settings, controls: int) -> ModelFit:
    """Own probe (and `controls` random-label probes) at every layer; each layer's Gram matrix is formed once."""
    y_train = y[split.train]
    labels = torch.from_numpy(np.concatenate([y_train[None], control_labels(y_train, controls)]))
    train, val_rows = _index(split.train), _index(split.val)
    layers = []
    for layer in range(x.shape[0]):
        rows = x[layer]
        fit = fit_layer(rows.index_select(0, train), labels, s.c, s.max_iter)
        val = (rows.index_select(0, val_rows) - fit.mean).double()
        layers.append((fit, (val @ fit.coef.double().T + fit.offset).numpy()))  # [m, 1 + controls]
    fits = [f for f, _ in layers]
    scores = np.stack([sc for _, sc in layers], axis=-1)  # [m, 1 + controls, L]
    probes = Probes(
        coef=torch.stack([f.coef[0] for f in fits]),
        mean=torch.stack([f.mean for f in fits]),
        offset=torch.stack([f.offset[0] for f in fits]),
        n_iter=max(f.n_iter for f in fits),
    )
    return ModelFit(
        probes=probes,
        scores=scores[:, 0],
        control_scores=scores[:, 1:].transpose(1, 0, 2),
    )


def own_model(fit: ModelFit, y: np.ndarray, split: PromptSplit, s: Settings) -> dict:
    """Per-layer metrics of the model's own probe on its val split."""
    y_val = y[split.val]
    result = _curve(fit.scores, y_val, s)
    result["per_layer"]["accuracy"] = ((fit.scores > 0) == y_val[:, None]).mean(0).tolist()
    result["n_layers_above_chance"] = int(sum(lo > 0.5 for lo in result["per_layer"]["ci_lower"]))
    result["label_balance"] = float(y[split.train].mean())
    result["n_train"], result["n_val"] = len(split.train), len(split.val)
    return result


def control(fit: ModelFit, y: np.ndarray, split: PromptSplit, s: Settings, model: str) -> dict:
    """Random-label control: probes on permuted train labels, AUROC against the real val labels."""
    y_val = y[split.val]
    per_seed_arr = np.stack([auroc(scores, y_val) for scores in fit.control_scores])  # [seeds, L]
    means = per_seed_arr.mean(0)
    return {
        "reference_model": model,
        "per_layer_mean": means.tolist(),
        "per_layer_std": per_seed_arr.std(0).tolist(),
        "overall_mean": float(means.mean()),
        "overall_std": float(means.std()),  # the study's: across layers, of the per-layer means
        "n_seeds": s.control_seeds,
    }


def transfer(ref: Probes, x: torch.Tensor, y: np.ndarray, split: PromptSplit, s: Settings) -> dict:
    """Frozen reference probes on the target's val activations, scored against the target's own labels."""
    scores = ref.decision(x, _index(split.val)).numpy().T
    y_val = y[split.val]
    result = _curve(scores, y_val, s)
    null = permutation_aurocs(scores, permuted_labels(y_val, s.permutations, s.seed))  # [n_perm, L]
    null_max = null.max(axis=1)
    result["peak_p_value"] = permutation_p(result["peak_auroc"], null[:, result["peak_layer"]])
    result["peak_corrected_p"] = permutation_p(result["peak_auroc"], null_max)
    result["null_peak_95th"] = float(np.percentile(null_max, 95))
    return result


def ablation(x: torch.Tensor, y: np.ndarray, split: PromptSplit, fit: ModelFit, own: dict, s: Settings) -> dict:
    """Project the unit probe direction out of the peak layer (h − α(h·d̂)d̂, no centring); same probe and a retrain.

    The projection commutes with centring, so the retrain's Gram matrix is K − α(2−α)·ppᵀ with p = X꜀d̂. K is
    recomputed in float64 for this one layer: with the label direction gone the retrain is a weak, flat problem
    whose AUROC moves with 1e-6 relative changes of K (float32 rounding), while the probe direction itself is
    accurate to ~1e-6 rad from the float32 fit.
    """
    layer, alpha = own["peak_layer"], s.ablation_alpha
    coef = fit.probes.coef[layer].double()
    direction = coef / coef.norm()
    y_val = y[split.val]
    raw_val = x[layer].index_select(0, _index(split.val)).double()
    same = ((raw_val - alpha * (raw_val @ direction)[:, None] * direction) @ coef + fit.probes.intercept[layer]).numpy()

    train, mean, kernel = centred_gram(x[layer].index_select(0, _index(split.train)).double())
    val = raw_val - mean
    p_train, p_val = train @ direction, val @ direction
    shrink = alpha * (2 - alpha)
    kernel = kernel - shrink * torch.outer(p_train, p_train)
    a, b, _ = fit_dual(kernel, torch.from_numpy(y[split.train])[None], s.c, s.max_iter)
    fresh_scores = (val @ (train.T @ a[0]) - shrink * p_val * (p_train @ a[0]) + b[0]).numpy()
    retrained = float(auroc(fresh_scores, y_val))
    return {
        "layer": layer,
        "auroc_original": own["peak_auroc"],
        "auroc_ablated": constant_safe_auroc(same, y_val),
        "auroc_retrained": retrained,
        "recovery": retrained / own["peak_auroc"],
        "accuracy_retrained": float(((fresh_scores > 0) == y_val).mean()),
        "direction_norm": float(coef.norm()),
    }


def analyze(load: Loader, split: PromptSplit, models: list[str], reference: str, s: Settings) -> dict[str, dict]:
    """Every probing result; keys are the output files' stems."""
    order = [reference, *[m for m in models if m != reference]]
    per_model: dict[str, dict] = {}
    transfers: dict[str, dict] = {}
    ablations: dict[str, dict] = {}
    directions: dict[str, torch.Tensor] = {}
    control_result: dict = {}
    ref_probes: Probes | None = None
    not_probed: dict[str, str] = {}
    for model in tqdm(order, desc="probe analysis", unit="model"):
        y = split.labels[model]
        if model != reference and (problem := one_class(model, y[split.train], y[split.val])):
            # e.g. a tiny base that answers every validation prompt correctly: its numbers are n/a, the rest stand
            not_probed[model] = problem
            continue
        x = load(model)
        _check_labels(model, y[split.train], y[split.val])
        fit = fit_model(x, y, split, s, s.control_seeds if model == reference else 0)
        per_model[model] = own_model(fit, y, split, s)
        directions[model] = fit.probes.coef
        ablations[model] = ablation(x, y, split, fit, per_model[model], s)
        if model == reference:
            ref_probes = fit.probes
            control_result = control(fit, y, split, s, model)
        else:
            assert ref_probes is not None  # the reference is processed first
            transfers[model] = transfer(ref_probes, x, y, split, s)
        del x, fit
    models = [m for m in models if m not in not_probed]
    cosines = {}
    for a, b in combinations(models, 2):
        per_layer = cosine(directions[a], directions[b])
        cosines[f"{a}_vs_{b}"] = {"per_layer": per_layer.tolist(), "mean_cosine": float(per_layer.mean())}
    results = {
        "per_model": {m: per_model[m] for m in models},
        "control": control_result,
        "transfer": {m: transfers[m] for m in models if m in transfers},
        "cosine": cosines,
        "ablation": {m: ablations[m] for m in models},
    }
    results["summary"] = summarize(results, reference)
    if not_probed:
        results["summary"]["not_probed"] = not_probed
    return results


def summarize(results: dict, reference: str) -> dict:
    """Compact headline numbers (DVC metrics)."""
    r3 = lambda v: round(float(v), 4)  # noqa: E731
    ctrl = results["control"]
    return {
        "reference_model": reference,
        "control": {"overall_mean": r3(ctrl["overall_mean"]), "overall_std": r3(ctrl["overall_std"])},
        "own": {
            m: {"mean_auroc": r3(v["mean_auroc"]), "peak_auroc": r3(v["peak_auroc"]), "peak_layer": v["peak_layer"]}
            for m, v in results["per_model"].items()
        },
        "transfer": {
            m: {
                "mean_auroc": r3(v["mean_auroc"]),
                "peak_auroc": r3(v["peak_auroc"]),
                "peak_layer": v["peak_layer"],
                "peak_corrected_p": r3(v["peak_corrected_p"]),
            }
            for m, v in results["transfer"].items()
        },
        "ablation_recovery": {m: r3(v["recovery"]) for m, v in results["ablation"].items()},
        "mean_cosine": {k: r3(v["mean_cosine"]) for k, v in results["cosine"].items()},
    }
