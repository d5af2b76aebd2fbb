"""Figures of posts 1-4 that the probe stage does not draw: behaviour bars, relearning/GRPO proxy curves,
and the post-4 probe summary. Each figure is written as PNG and PDF; a figure whose inputs are all missing is skipped
and reported."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: report runs on clusters and CI
import matplotlib.pyplot as plt
import numpy as np

from sycorec.errors import ConfigError
from sycorec.io import atomic_path
from sycorec.report.results import Results

METRIC_LABELS = {
    "aggregate_sycophancy": "Aggregate",
    "answer_sycophancy_rate": "Answer syc.",
    "answer_sycophancy_gap": "Answer gap",
    "plain_accuracy": "Plain acc.",
    "flip_rate": "Flip rate",
    "stubbornness": "Stubbornness",
    "feedback_sycophancy": "Feedback syc.",
    "poems_sycophancy": "Poems",
    "arguments_sycophancy": "Arguments",
    "math_sycophancy": "Math",
}


def _label(spec_labels: Mapping[str, str], model: str) -> str:
    return spec_labels.get(model, model)


def behaviour_bars(ax: Any, spec: Mapping[str, Any], results: Results, labels: Mapping[str, str]) -> bool:
    models, metrics = spec["models"], spec["metrics"]
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    drawn = False
    for j, model in enumerate(models):
        values, errors = [], [[], []]
        for key in metrics:
            value = results.number(f"metrics.{model}.{key}")
            ci = results.ci(f"metrics.{model}.{key}")
            values.append(np.nan if value is None else value)
            errors[0].append(value - ci[0] if value is not None and ci else 0.0)
            errors[1].append(ci[1] - value if value is not None and ci else 0.0)
            drawn |= value is not None
        ax.bar(
            x + (j - (len(models) - 1) / 2) * width,
            values,
            width,
            yerr=np.clip(errors, 0, None),
            capsize=2,
            label=_label(labels, model),
        )
    ax.set_xticks(x, [METRIC_LABELS.get(k, k) for k in metrics], rotation=20, ha="right")
    ax.set_ylabel("rate")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    return drawn


def curves(ax: Any, spec: Mapping[str, Any], results: Results, labels: Mapping[str, str]) -> bool:
    drawn = False
    for name, curve in spec["curves"].items():
        steps, ys = results.get(f"curves.{curve}.step"), results.get(f"curves.{curve}.{spec['series']}")
        if isinstance(steps, list) and isinstance(ys, list) and steps:
            n = min(len(steps), len(ys))
            ax.plot(steps[:n], [np.nan if y is None else y for y in ys[:n]], marker="o", markersize=3, label=name)
            drawn = True
    ax.set_xlabel(spec.get("xlabel", "step"))
    ax.set_ylabel(spec["series"].replace("_", " "))
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def probe_summary(ax: Any, spec: Mapping[str, Any], results: Results, labels: Mapping[str, str]) -> bool:
    models, run = spec["models"], f"probing.{spec['run']}"
    series = {
        "own-model mean AUROC": [results.number(f"{run}.per_model.{m}.mean_auroc") for m in models],
        "SFT→X mean transfer": [results.number(f"{run}.transfer.{m}.mean_auroc") for m in models],
        "SFT→X peak transfer": [results.number(f"{run}.transfer.{m}.peak_auroc") for m in models],
    }
    x = np.arange(len(models))
    width = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.bar(x + (j - 1) * width, [np.nan if v is None else v for v in values], width, label=name)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8, label="chance")
    floor = results.number(f"{run}.control.overall_mean")
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle=":", linewidth=1.0, label=f"control floor {floor:.3f}")
    ax.set_xticks(x, [_label(labels, m) for m in models])
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.3, 1.05)
    ax.legend(fontsize=7)
    return any(v is not None for values in series.values() for v in values)


DRAWERS: dict[str, Callable[..., bool]] = {
    "behaviour_bars": behaviour_bars,
    "curves": curves,
    "probe_summary": probe_summary,
}


def draw_figures(spec: Mapping[str, Any], results: Results, out_dir: Path, dpi: int) -> tuple[list[Path], list[str]]:
    """Draw every figure of `spec["figures"]`; return the files written and the ids skipped for lack of input."""
    labels = spec.get("model_labels", {})
    written: list[Path] = []
    skipped: list[str] = []
    for fig_spec in spec.get("figures", []):
        kind = fig_spec.get("kind")
        if kind not in DRAWERS:
            raise ConfigError(f"tables.yaml: figure {fig_spec.get('id')!r} has unknown kind {kind!r}")
        fig, ax = plt.subplots(figsize=(7, 4))
        try:
            if not DRAWERS[kind](ax, fig_spec, results, labels):
                skipped.append(fig_spec["id"])
                continue
            ax.set_title(fig_spec["title"], fontsize=10)
            fig.tight_layout()
            for suffix in ("png", "pdf"):
                path = out_dir / f"{fig_spec['id']}.{suffix}"
                with atomic_path(path) as tmp:
                    # no creation date in the PDF, so an unchanged figure is byte-identical between runs
                    metadata = {"CreationDate": None} if suffix == "pdf" else None
                    fig.savefig(tmp, format=suffix, dpi=dpi, metadata=metadata)
                written.append(path)
        finally:
            plt.close(fig)
    return written, skipped
