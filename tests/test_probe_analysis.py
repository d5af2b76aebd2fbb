"""The probing analysis on synthetic activations with a planted direction, and the `probe analyze` command."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import DataError
from sycorec.paths import activations_path
from sycorec.probe import figures as probe_figures
from sycorec.probe import synthetic
from sycorec.probe.analysis import Settings, analyze
from sycorec.probe.extract import TENSOR
from sycorec.probe.figures import STEMS, plot_all
from sycorec.probe.prompts import PromptSplit, grouped_split

N, LAYERS, HIDDEN, PLANTED = 240, 4, 48, 2
SETTINGS = Settings(
    c=1.0, max_iter=100, bootstrap_iterations=50, permutations=99, control_seeds=2, ablation_alpha=1.0, seed=42
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _split(models: list[str], labels: dict[str, np.ndarray]) -> PromptSplit:
    groups = [f"g{i // 2}" for i in range(N)]  # two prompts per question
    split = np.array(grouped_split(groups, 0.25, seed=42))
    return PromptSplit(
        item_ids=[f"item{i}" for i in range(N)],
        train=np.flatnonzero(split == "train"),
        val=np.flatnonzero(split == "val"),
        labels={m: labels[m] for m in models},
    )


def _world() -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """ref and shared carry the same direction at PLANTED; other carries an unrelated one; labels differ per model."""
    shared_dir = synthetic.unit_directions(LAYERS, HIDDEN, seed=7)
    other_dir = synthetic.unit_directions(LAYERS, HIDDEN, seed=8)
    signal = np.zeros(LAYERS)
    signal[PLANTED] = 0.5
    labels = {m: synthetic.labels(N, 0.45, seed=s) for s, m in enumerate(["ref", "shared", "other"])}
    acts = {
        "ref": synthetic.activations(labels["ref"], signal, shared_dir, model_seed=1),
        "shared": synthetic.activations(labels["shared"], signal, shared_dir, model_seed=2),
        "other": synthetic.activations(labels["other"], signal, other_dir, model_seed=3),
    }
    return labels, acts


@pytest.fixture(scope="module")
def results() -> dict:
    labels, acts = _world()
    models = ["ref", "shared", "other"]
    return analyze(acts.__getitem__, _split(models, labels), models, "ref", SETTINGS)


def test_own_auroc_peaks_at_the_planted_layer(results: dict) -> None:
    for model in ("ref", "shared", "other"):
        own = results["per_model"][model]
        assert own["peak_layer"] == PLANTED
        assert own["peak_auroc"] > 0.9
        others = [a for layer, a in enumerate(own["per_layer"]["auroc"]) if layer != PLANTED]
        assert max(abs(a - 0.5) for a in others) < 0.2
        assert own["per_layer"]["ci_lower"][PLANTED] > 0.5 and own["n_layers_above_chance"] >= 1
        assert own["n_train"] + own["n_val"] == N


def test_transfer_follows_the_shared_direction(results: dict) -> None:
    shared, other = results["transfer"]["shared"], results["transfer"]["other"]
    assert set(results["transfer"]) == {"shared", "other"}
    assert shared["per_layer"]["auroc"][PLANTED] > 0.9 and shared["peak_layer"] == PLANTED
    assert shared["peak_p_value"] == pytest.approx(1 / (SETTINGS.permutations + 1))
    assert shared["peak_corrected_p"] == pytest.approx(1 / (SETTINGS.permutations + 1))
    assert abs(other["per_layer"]["auroc"][PLANTED] - 0.5) < 0.2
    assert other["peak_corrected_p"] > 0.05
    assert shared["mean_auroc"] < shared["peak_auroc"]


def test_cosine_and_control(results: dict) -> None:
    assert results["cosine"]["ref_vs_shared"]["per_layer"][PLANTED] > 0.5
    assert abs(results["cosine"]["ref_vs_other"]["per_layer"][PLANTED]) < 0.3
    control = results["control"]
    assert control["reference_model"] == "ref" and control["n_seeds"] == SETTINGS.control_seeds
    assert results["per_model"]["ref"]["peak_auroc"] > control["per_layer_mean"][PLANTED] + 2 * control["overall_std"]


def test_ablation_removes_the_direction(results: dict) -> None:
    for model in ("ref", "shared", "other"):
        ab = results["ablation"][model]
        assert ab["layer"] == PLANTED and ab["auroc_ablated"] == 0.5
        assert ab["auroc_retrained"] < ab["auroc_original"] - 0.2  # one planted direction: little left to find
        assert ab["recovery"] == pytest.approx(ab["auroc_retrained"] / ab["auroc_original"])


def test_analyze_command_writes_results_and_figures(run_root: Path) -> None:
    cfg = load_config("params.yaml", "tiny")
    models = cfg.probing.runs["R6"].models
    direction = synthetic.unit_directions(LAYERS, HIDDEN, seed=7)
    signal = np.array([0.0, 0.0, 0.5, 0.0])
    groups = [f"g{i // 2}" for i in range(N)]
    split = grouped_split(groups, cfg.probing.val_fraction, seed=42)
    labels = {m: synthetic.labels(N, 0.4, seed=i) for i, m in enumerate(models)}
    prompts = [
        {
            "item_id": f"item{i}",
            "group_id": groups[i],
            "split": split[i],
            "labels": {m: int(labels[m][i]) for m in models},
        }
        for i in range(N)
    ]
    doc = {"models": models, "reference_model": cfg.probing.reference_model, "prompts": prompts}
    (run_root / "results/probing/R6").mkdir(parents=True)
    (run_root / "results/probing/R6/prompts.json").write_text(json.dumps(doc))
    for i, m in enumerate(models):
        acts = synthetic.activations(labels[m], signal, direction, model_seed=i + 1)
        path = activations_path(cfg, "R6", m)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({TENSOR: acts}, str(path), metadata={"item_ids": json.dumps([p["item_id"] for p in prompts])})

    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "analyze", "--run", "R6"])
    assert result.exit_code == 0, result.output
    out = run_root / "results/probing/R6"
    per_model = json.loads((out / "per_model.json").read_text())
    assert set(per_model) == set(models)
    assert len(per_model["sft"]["per_layer"]["auroc"]) == LAYERS
    transfer = json.loads((out / "transfer.json").read_text())
    assert set(transfer) == set(models) - {"sft"}
    assert len(json.loads((out / "cosine.json").read_text())) == len(models) * (len(models) - 1) // 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["own"]["sft"]["peak_layer"] == 2
    for stem in STEMS:
        for ext in ("png", "pdf"):
            assert (run_root / "results/figures/probing/R6" / f"{stem}.{ext}").stat().st_size > 0


@pytest.mark.slow  # renders every figure twice
def test_probe_figures_are_the_same_bytes_for_the_same_results(results: dict, tmp_path: Path) -> None:
    first, second = plot_all(results, tmp_path / "a", 40), plot_all(results, tmp_path / "b", 40)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    pdfs = [p for p in first if p.suffix == ".pdf"]
    assert pdfs and not any(b"/CreationDate" in p.read_bytes() for p in pdfs)  # no date: a later run is the same bytes


def test_analyze_rejects_stale_activations(run_root: Path) -> None:
    cfg = load_config("params.yaml", "tiny")
    models = cfg.probing.runs["R6"].models
    prompts = [{"item_id": "a", "group_id": "g", "split": "train", "labels": dict.fromkeys(models, 0)}]
    (run_root / "results/probing/R6").mkdir(parents=True)
    (run_root / "results/probing/R6/prompts.json").write_text(json.dumps({"models": models, "prompts": prompts}))
    path = activations_path(cfg, "R6", "sft")
    path.parent.mkdir(parents=True)
    save_file({TENSOR: torch.zeros(1, 1, 4)}, str(path), metadata={"item_ids": json.dumps(["b"])})
    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "analyze", "--run", "R6"])
    assert result.exit_code == 2 and "another prompt set" in result.output


def test_ablation_and_control_equal_converged_sklearn(results: dict) -> None:
    """The Gram-space ablation retrain (K − α(2−α)ppᵀ) and the random-label controls against sklearn run to
    convergence on explicitly projected / shuffled activations (the study's code path)."""
    labels, acts = _world()
    models = ["ref", "shared", "other"]
    split = _split(models, labels)
    tr, va = split.train, split.val

    def converged(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=SETTINGS.c, max_iter=100_000, tol=1e-10).fit(x, y)

    for model in models:
        x, y = acts[model][PLANTED].numpy().astype(np.float64), labels[model]
        own = converged(x[tr], y[tr])
        d = own.coef_[0] / np.linalg.norm(own.coef_[0])
        x_train, x_val = (h - SETTINGS.ablation_alpha * np.outer(h @ d, d) for h in (x[tr], x[va]))
        retrained = roc_auc_score(y[va], converged(x_train, y[tr]).decision_function(x_val))
        assert results["ablation"][model]["auroc_retrained"] == pytest.approx(retrained, abs=1e-3)
    y = labels["ref"]
    for layer in range(LAYERS):
        x = acts["ref"][layer].numpy()
        seeds = [
            roc_auc_score(y[va], converged(x[tr], np.random.RandomState(s).permutation(y[tr])).decision_function(x[va]))
            for s in range(SETTINGS.control_seeds)
        ]
        assert results["control"]["per_layer_mean"][layer] == pytest.approx(np.mean(seeds), abs=1e-3)


def test_residual_stream_looks_like_an_llm() -> None:
    y = synthetic.labels(48, 0.5, seed=0)
    x = synthetic.residual_stream(y, np.zeros(6), synthetic.unit_directions(6, 4096, seed=1)[:, None], norms=(30, 400))
    norms = x.norm(dim=-1).mean(1)
    assert (norms[1:] > norms[:-1]).all() and 20 < norms[0] < 40 and 300 < norms[-1] < 500
    spread = (x[-1] - x[-1].mean(0)).std(0)
    assert spread.topk(4).values.min() > 2 * spread.median()  # a few outlier dimensions
    centred = x - x.mean(1, keepdim=True)
    assert torch.nn.functional.cosine_similarity(centred[2], centred[3], dim=-1).mean() > 0.7  # a residual stream


def test_layer_axes_have_integer_ticks(results: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4-layer model's layer axis reads 0, 1, 2, 3 (matplotlib's default ticks would be 0.0, 0.5, …, 3.0)."""
    drawn = []

    def keep(fig: plt.Figure, out_dir: Path, stem: str, dpi: int) -> list[Path]:
        fig.canvas.draw()
        drawn.append(fig)
        return []

    monkeypatch.setattr(probe_figures, "_save", keep)
    plot_all(results, tmp_path, 40)
    layer_axes = [ax for fig in drawn for ax in fig.axes if ax.get_xlabel() == "layer"]
    assert len(layer_axes) == 2  # own-model curves and the transfer curves
    for ax in layer_axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [float(i) for i in range(LAYERS)], ticks
    for fig in drawn:
        plt.close(fig)


def test_a_model_with_one_class_is_not_probed_and_the_rest_stand(results: dict) -> None:
    """A tiny base that answers every validation prompt correctly (the no-AVX path, seed 42) leaves its numbers n/a;
    a reference with one class stops the analysis: every transfer needs its probe."""
    labels, acts = _world()
    models = ["ref", "shared", "other"]
    split = _split(models, labels)
    labels["other"][split.val] = 0  # every validation answer correct
    loaded: list[str] = []

    def load(model: str) -> torch.Tensor:
        loaded.append(model)
        return acts[model]

    partial = analyze(load, _split(models, labels), models, "ref", SETTINGS)
    assert loaded == ["ref", "shared"]
    assert set(partial["per_model"]) == set(partial["ablation"]) == {"ref", "shared"}
    assert set(partial["transfer"]) == {"shared"} and set(partial["cosine"]) == {"ref_vs_shared"}
    assert partial["summary"]["not_probed"] == {"other": "other: the val split has 0 incorrect and 60 correct answers"}
    assert partial["per_model"]["shared"] == results["per_model"]["shared"]  # the others' numbers are unchanged
    assert "not_probed" not in results["summary"]
    labels["ref"][split.train] = 1
    with pytest.raises(DataError, match=r"ref: the train split has 180 incorrect and 0 correct answers; a probe needs"):
        analyze(load, _split(models, labels), models, "ref", SETTINGS)
