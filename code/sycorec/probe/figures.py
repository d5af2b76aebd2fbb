"""Probing figures (PNG + PDF): layer-AUROC curves with the control band, transfer, direction cosines, ablation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from sycorec.io import atomic_path

STEMS = ("probe_layer_auroc", "probe_transfer", "probe_cosine", "probe_ablation")


def _save(fig: plt.Figure, out_dir: Path, stem: str, dpi: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        with atomic_path(path) as tmp:
            # no creation date in the PDF, so the same results draw the same bytes
            metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return paths


def _band(ax: plt.Axes, curve: dict, label: str, color: str) -> None:
    layers = np.arange(len(curve["per_layer"]["auroc"]))
    ax.plot(layers, curve["per_layer"]["auroc"], color=color, label=label)
    ax.fill_between(layers, curve["per_layer"]["ci_lower"], curve["per_layer"]["ci_upper"], color=color, alpha=0.15)
    ax.axvline(curve["peak_layer"], color=color, linestyle=":", linewidth=0.8)


def _axes_common(ax: plt.Axes, title: str) -> None:
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set(xlabel="layer", ylabel="AUROC", title=title, ylim=(0.4, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole: a 2-layer axis must not read 0.2, 0.4
    ax.legend(fontsize=7)


def layer_auroc(results: dict, out_dir: Path, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4))
    control = results["control"]
    mean, std = np.array(control["per_layer_mean"]), np.array(control["per_layer_std"])
    layers = np.arange(len(mean))
    ax.fill_between(layers, mean - 2 * std, mean + 2 * std, color="grey", alpha=0.3, label="random-label control ±2σ")
    for i, (model, curve) in enumerate(results["per_model"].items()):
        _band(ax, curve, model, f"C{i}")
    _axes_common(ax, "Own-model probe AUROC per layer")
    return _save(fig, out_dir, "probe_layer_auroc", dpi)


def transfer(results: dict, out_dir: Path, dpi: int) -> list[Path]:
    reference = results["control"]["reference_model"]
    targets = list(results["transfer"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, model in enumerate(targets):
        _band(left, results["transfer"][model], f"{reference}→{model}", f"C{i}")
    _axes_common(left, f"{reference} probes on other models (val)")
    x = np.arange(len(targets))
    means = [results["transfer"][m]["mean_auroc"] for m in targets]
    peaks = [results["transfer"][m]["peak_auroc"] for m in targets]
    right.bar(x - 0.2, means, 0.4, label="mean over layers")
    right.bar(x + 0.2, peaks, 0.4, label="peak layer")
    for i, m in enumerate(targets):
        t = results["transfer"][m]
        right.hlines(t["null_peak_95th"], i - 0.4, i + 0.4, colors="grey", linestyles="--")
        right.text(i + 0.2, peaks[i] + 0.01, "*" if t["peak_corrected_p"] < 0.05 else "n.s.", ha="center", fontsize=8)
    right.set_xticks(x, [f"{reference}→{m}" for m in targets], rotation=30, ha="right", fontsize=8)
    right.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    right.set(ylabel="AUROC", title="Transfer: mean vs peak (grey: maxT null 95th)", ylim=(0.3, 1.05))
    right.legend(fontsize=7)
    return _save(fig, out_dir, "probe_transfer", dpi)


def cosine(results: dict, out_dir: Path, dpi: int) -> list[Path]:
    models = list(results["per_model"])
    grid = np.eye(len(models))
    for i, a in enumerate(models):
        for j, b in enumerate(models[i + 1 :], start=i + 1):
            grid[i, j] = grid[j, i] = results["cosine"][f"{a}_vs_{b}"]["mean_cosine"]
    fig, ax = plt.subplots(figsize=(5, 4.3))
    image = ax.imshow(grid, cmap="viridis", vmin=min(0.0, grid.min()), vmax=1.0)
    for i in range(len(models)):
        for j in range(len(models)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white", fontsize=7)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_title("Probe direction cosine (mean over layers)")
    fig.colorbar(image, ax=ax)
    return _save(fig, out_dir, "probe_cosine", dpi)


def ablation(results: dict, out_dir: Path, dpi: int) -> list[Path]:
    models = list(results["ablation"])
    rows = [results["ablation"][m] for m in models]
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, label) in enumerate(
        [("auroc_original", "original"), ("auroc_ablated", "same probe, ablated"), ("auroc_retrained", "retrained")]
    ):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    ax.set_xticks(x, [f"{m} (L{r['layer']})" for m, r in zip(models, rows, strict=True)], rotation=30, ha="right")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set(ylabel="AUROC", title="Ablating the probe direction at the peak layer", ylim=(0.3, 1.05))
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "probe_ablation", dpi)


def plot_all(results: dict, out_dir: Path, dpi: int) -> list[Path]:
    paths = layer_auroc(results, out_dir, dpi) + cosine(results, out_dir, dpi) + ablation(results, out_dir, dpi)
    if results["transfer"]:
        paths += transfer(results, out_dir, dpi)
    return paths
