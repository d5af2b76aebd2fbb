"""`sycorec probe`: build the prompt set, extract activations per model, run the probe analysis."""

from __future__ import annotations

import click

from sycorec.clikit import Config, pass_config, timed
from sycorec.errors import ConfigError
from sycorec.io import write_json
from sycorec.probe.analysis import Settings, analyze
from sycorec.probe.extract import extract, load_activations
from sycorec.probe.figures import plot_all
from sycorec.probe.prompts import PromptSplit, read_prompt_set, write_prompt_set


@click.group()
def probe() -> None:
    """Linear probes: prompt set, activations, analysis."""


@probe.command("prompts")
@pass_config
@timed("probe_prompts")
def prompts_cmd(cfg: Config) -> None:
    """Label the pressure prompts from every probed model's verdicts; write the shared split."""
    doc = write_prompt_set(cfg)
    click.echo(f"{doc['n_prompts']} prompts ({doc['n_train']} train / {doc['n_val']} val); dropped {doc['n_dropped']}")


@probe.command("extract")
@click.option("--model", "model", required=True, help="Model name from probing.models.")
@pass_config
@timed(lambda kw: f"probe_extract@{kw['model']}")
def extract_cmd(cfg: Config, model: str) -> None:
    """Last-prompt-token activations of every layer for the prompt set."""
    if model not in cfg.probing.models:
        raise ConfigError(f"model {model!r} is not in probing.models {cfg.probing.models}")
    doc = read_prompt_set(cfg)
    path = extract(cfg, model, doc["prompts"])
    click.echo(f"wrote {path}")


@probe.command("analyze")
@pass_config
@timed("probe_analyze")
def analyze_cmd(cfg: Config) -> None:
    """Own-model probes, control, transfer, cosines, ablation → results/probing, figures → results/figures/probing."""
    split = PromptSplit.from_doc(read_prompt_set(cfg))
    results = analyze(
        lambda m: load_activations(cfg, m, split.item_ids),
        split,
        list(cfg.probing.models),
        cfg.probing.reference_model,
        Settings.from_config(cfg),
    )
    out = cfg.paths.results / "probing"
    for stem, data in results.items():
        write_json(out / f"{stem}.json", data)
    plot_all(results, cfg.paths.results / "figures" / "probing", cfg.report.figure_dpi)
    click.echo(f"wrote {out}; summary: {results['summary']['own']}")
