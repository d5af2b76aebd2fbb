"""`sycorec probe`: build the prompt set, extract activations per model, run the probe analysis."""

from __future__ import annotations

import click
import torch

from sycorec.clikit import Config, stage
from sycorec.errors import ConfigError
from sycorec.io import write_json
from sycorec.paths import beyond_run, probe_prompts_path, probing_run_dir
from sycorec.probe.analysis import Settings, analyze, unprobeable
from sycorec.probe.extract import extract, load_activations
from sycorec.probe.figures import plot_all
from sycorec.probe.prompts import PromptSplit, beyond_prompt_set, read_prompt_set, write_prompt_set


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
    write_analysis(cfg, run, results)


@probe.command("beyond")
@click.option("--model", "model", required=True, help="Model name from probing.beyond.models.")
@stage("probe_beyond@{model}")
def beyond_cmd(cfg: Config, model: str) -> None:
    """A model beyond the study, probed as probing.beyond.run probes the study's models (its prompts that the model
    answered): extraction, own probe, control, the reference probe's transfer, cosine, ablation →
    results/probing/<run>+<model>."""
    beyond, reference = cfg.probing.beyond, cfg.probing.reference_model
    if model not in beyond.models:
        raise ConfigError(f"model {model!r} is not in probing.beyond.models {beyond.models}")
    source = read_prompt_set(cfg, beyond.run)
    doc, kept = beyond_prompt_set(cfg, model, source)
    run = beyond_run(beyond.run, model)
    write_json(probe_prompts_path(cfg, run), doc)
    split = PromptSplit.from_doc(doc)
    # e.g. a method that broke the model: a finding to show, not a failed pipeline
    if reason := unprobeable(split, [model, reference]):
        write_json(probing_run_dir(cfg, run) / "summary.json", {"reference_model": reference, "not_probed": reason})
        for empty in (cfg.paths.probing / run, cfg.paths.results / "figures" / "probing" / run):
            empty.mkdir(parents=True, exist_ok=True)
        click.echo(f"{model} not probed: {reason}")
        return
    extract(cfg, run, model, doc["prompts"])
    source_ids = [p["item_id"] for p in source["prompts"]]

    def load(name: str) -> torch.Tensor:
        if name == reference:  # the reference's activations of the source run, on the prompts kept
            return load_activations(cfg, beyond.run, name, source_ids).index_select(1, torch.from_numpy(kept))
        return load_activations(cfg, run, name, split.item_ids)

    write_analysis(cfg, run, analyze(load, split, doc["models"], reference, Settings.from_config(cfg)))


def write_analysis(cfg: Config, run: str, results: dict[str, dict]) -> None:
    out = probing_run_dir(cfg, run)
    for stem, data in results.items():
        write_json(out / f"{stem}.json", data)
    plot_all(results, cfg.paths.results / "figures" / "probing" / run, cfg.report.figure_dpi)
    click.echo(f"wrote {out}; summary: {results['summary']['own']}")
