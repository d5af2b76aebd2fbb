"""`sycorec probe`: build the prompt set, extract activations per model, run the probe analysis."""

from __future__ import annotations

import click

from sycorec.clikit import Config, stage
from sycorec.errors import ConfigError
from sycorec.io import write_json
from sycorec.paths import probing_run_dir
from sycorec.probe.analysis import Settings, analyze
from sycorec.probe.extract import extract, load_activations
from sycorec.probe.figures import plot_all
from sycorec.probe.prompts import PromptSplit, read_prompt_set, write_prompt_set


@click.group()
def probe() -> None:
    """Linear probes: prompt set, activations, analysis."""


RUN = click.option("--run", "run", required=True, help="Probing run from probing.runs.")


@probe.command("prompts")
@RUN
@stage("probe_prompts_{run}")  # one explicit stage per run: its deps list its models' verdicts
def prompts_cmd(cfg: Config, run: str) -> None:
    """Label the pressure prompts from the run's models' verdicts; write the run's shared split."""
    doc = write_prompt_set(cfg, run)
    click.echo(f"{doc['n_prompts']} prompts ({doc['n_train']} train / {doc['n_val']} val); dropped {doc['n_dropped']}")


@probe.command("extract")
@RUN
@click.option("--model", "model", required=True, help="Model name from the run's models.")
@stage("probe_extract@{run}-{model}")
def extract_cmd(cfg: Config, run: str, model: str) -> None:
    """Last-prompt-token activations of every layer for the run's prompt set."""
    models = cfg.probing.run(run).models
    if model not in models:
        raise ConfigError(f"model {model!r} is not in probing.runs.{run}.models {models}")
    doc = read_prompt_set(cfg, run)
    path = extract(cfg, run, model, doc["prompts"])
    click.echo(f"wrote {path}")


@probe.command("analyze")
@RUN
@stage("probe_analyze@{run}")
def analyze_cmd(cfg: Config, run: str) -> None:
    """Own-model probes, control, transfer, cosines, ablation → results/probing/<run>, figures →
    results/figures/probing/<run>."""
    split = PromptSplit.from_doc(read_prompt_set(cfg, run))
    results = analyze(
        lambda m: load_activations(cfg, run, m, split.item_ids),
        split,
        list(cfg.probing.run(run).models),
        cfg.probing.reference_model,
        Settings.from_config(cfg),
    )
    out = probing_run_dir(cfg, run)
    for stem, data in results.items():
        write_json(out / f"{stem}.json", data)
    plot_all(results, cfg.paths.results / "figures" / "probing" / run, cfg.report.figure_dpi)
    click.echo(f"wrote {out}; summary: {results['summary']['own']}")
