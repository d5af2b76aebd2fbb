"""`sycorec report`: build every table/figure of posts 1-4, and diff them against the published numbers."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from sycorec.clikit import Config, pass_config, stage
from sycorec.report.build import build_report
from sycorec.report.diff import POSTS, Line, PostDiff, diff_post, load_published, published_path, write_diff
from sycorec.report.results import load_results
from sycorec.report.tables import load_spec
from sycorec.report.tolerance import tolerance_markdown


@click.group()
def report() -> None:
    """Tables, figures, errata, published diff, manifest."""


@report.command("build")
@stage("report")
def build(cfg: Config) -> None:
    """Write results/tables/post1..4, results/tables/errata, results/figures/report, results/manifest.json and the
    results page results/index.html."""
    summary = build_report(cfg)
    for line in summary.lines():
        click.echo(line)


@report.command("diff")
@click.option("--post", required=True, type=click.Choice(["1", "2", "3", "4", "all"]), help="Post number, or all.")
@click.option("--exit-zero", is_flag=True, help="Report FAIL/MISSING but exit 0 (e.g. to inspect a partial run).")
@pass_config
def diff(cfg: Config, post: str, exit_zero: bool) -> None:
    """Regenerated vs published numbers (PASS / FAIL / MISSING / OTHER-RUN / CONTEXT) and the tables' structure; a
    structure check only when tiny. Run `build` first. Exits 1 when a post has more FAILs than chance explains, a
    MISSING number or a structure problem (README, "The published diff and its tolerances")."""
    spec = load_spec()
    published = load_published(published_path(Path(cfg.report.published)))
    results = load_results(cfg, join=spec.get("join"))
    posts = POSTS if post == "all" else (f"post{post}",)
    out_dir = cfg.paths.results / "published_diff"
    judged = []
    for name in posts:
        result = diff_post(name, published, results, spec, cfg.paths.results / "tables", cfg.is_tiny)
        judged.append(result)
        write_diff(result, out_dir)
        for line in result.lines:
            reg = "—" if line.regenerated is None else f"{line.regenerated:.4g}"
            delta = "—" if line.delta is None else f"{line.delta:.3g}"
            click.echo(
                f"{line.status:8s} {line.id:40s} regenerated {reg:>8s}  published {line.published:<8g} "
                f"|Δ| {delta:>7s}  tol {line.tolerance or '—'}" + _other_run(line)
            )
        for problem in result.structure_problems:
            click.echo(f"STRUCTURE {problem}")
        click.echo(result.summary())
    if len(judged) > 1:  # the last line speaks for every post, not only the last one
        click.echo(overall_summary(judged))
    if any(result.failed for result in judged) and not exit_zero:
        sys.exit(1)


def overall_summary(judged: list[PostDiff]) -> str:
    verdicts = ", ".join(f"{r.post} {'FAILED' if r.failed else 'passed'}" for r in judged)
    counts = sum((r.counts for r in judged), Counter())
    problems = sum(len(r.structure_problems) for r in judged)
    fails = "" if judged[0].tiny else f"{counts['FAIL']} FAIL, "  # tiny: values are not compared
    return f"all posts: {verdicts}; {fails}{counts['MISSING']} MISSING, {problems} structure problems in all"


def _other_run(line: Line) -> str:
    if line.status != "OTHER-RUN":
        return ""
    canonical = "unpublished" if line.canonical is None else f"{line.canonical:g}"
    return f"  run {line.run}, errata {line.errata}, replicated run's value {canonical}"


@report.command("tolerances")
@click.option("--markdown", is_flag=True, required=True, help="The README's tolerance section, from published.yaml.")
@pass_config
def tolerances(cfg: Config, markdown: bool) -> None:
    """Print the tolerance model and one row per kind, generated from the code and data that apply them."""
    click.echo(tolerance_markdown(load_published(published_path(Path(cfg.report.published)))), nl=False)
