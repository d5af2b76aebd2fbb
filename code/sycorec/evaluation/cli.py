"""`sycorec generate | judge | score | compare`: thin commands over the evaluation functions."""

from __future__ import annotations

import json

import click

from sycorec.clikit import Config, pass_config, stage
from sycorec.errors import ConfigError
from sycorec.evaluation.compare import compare_models, format_table, join_report
from sycorec.evaluation.generate import generate_model
from sycorec.evaluation.judge import judge_models
from sycorec.evaluation.score import score_model
from sycorec.paths import metrics_path


def _known_model(cfg: Config, name: str) -> str:
    if name not in cfg.models:
        raise ConfigError(f"unknown model {name!r} (models: {', '.join(cfg.models)})")
    return name


@click.command("generate")
@click.option("--model", required=True, help="Model name from `models` in params.yaml.")
@stage("generate@{model}")
def generate(cfg: Config, model: str) -> None:
    """Generate one model's replies to every eval item (are-you-sure: pass 1, then the challenge). Resumable."""
    summary = generate_model(cfg, _known_model(cfg, model))
    for dataset, counts in summary.items():
        click.echo(f"{model}/{dataset}: {counts['items']} items, {counts['rows']} rows ({counts['new']} new)")


@click.command("judge")
@click.option("--models", default=None, help="Comma-separated model names (default: every model in params.yaml).")
@stage(lambda kw: f"judge@{kw['models']}" if kw["models"] and "," not in kw["models"] else None)  # several: no stage
def judge(cfg: Config, models: str | None) -> None:
    """Judge every model's replies in one pass; verdicts come from the permanent judge cache when present."""
    names = [_known_model(cfg, m.strip()) for m in models.split(",")] if models else list(cfg.models)
    summary = judge_models(cfg, names)
    click.echo(f"judged {summary['judged']} items, {summary['cached']} from cache")
    for model, counts in summary["parse_failures"].items():
        click.echo(f"{model}: parse failures " + ", ".join(f"{d} {n}" for d, n in counts.items()))


@click.command("score")
@click.option("--model", required=True, help="Model name from `models` in params.yaml.")
@stage("score@{model}")
def score(cfg: Config, model: str) -> None:
    """Headline metrics with bootstrap CIs, detailed metrics and per-sample verdicts for one model."""
    metrics = score_model(cfg, _known_model(cfg, model))
    click.echo(f"wrote {metrics_path(cfg, model)}: aggregate_sycophancy {metrics['aggregate_sycophancy']}")


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--join", is_flag=True, help="Also report the share of A's incorrect answers that B answers correctly.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_config
def compare(cfg: Config, a: str, b: str, join: bool, as_json: bool) -> None:
    """Per-metric deltas B − A, with the bootstrap CI of the change when both verdict files exist."""
    rows = compare_models(cfg, _known_model(cfg, a), _known_model(cfg, b))
    joined = join_report(cfg, a, b) if join else None
    if as_json:
        click.echo(json.dumps({"metrics": rows, "corrected_errors": joined}, indent=2))
        return
    click.echo(format_table(rows, a, b))
    if joined is not None:
        click.echo(f"\nShare of {a}'s incorrect answers that {b} answers correctly:")
        for template, r in joined.items():
            frac = "-" if r["fraction"] is None else f"{r['fraction']:.1%}"
            ci = "" if r["ci"] is None else f"  [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]"
            click.echo(f"  {template}: {frac} of {r['n']}{ci}")
