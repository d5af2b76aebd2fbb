"""`sycorec reproduce`: rebuild a post at full scale, then diff it against the published numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from sycorec.clikit import Config, pass_config
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.cluster.cli import CONTAINER_OPTION, MAX_PARALLEL_OPTION, SBATCH_OPTION
from sycorec.cluster.costs import format_plan, plan_costs
from sycorec.config import read_mapping
from sycorec.errors import SycorecError
from sycorec.train.common import prune_committed_checkpoints

POSTS_FILE = Path(__file__).parent / "posts.yaml"


def post_targets(post: str) -> list[str]:
    posts = read_mapping(POSTS_FILE)
    if post == "all":
        return sorted({t for spec in posts.values() for t in spec["targets"]})
    key = f"post{post}"
    if key not in posts:
        raise SycorecError(f"unknown post {post!r} (choose 1, 2, 3, 4 or all)")
    return posts[key]["targets"]


@click.command()
@click.option("--post", required=True, help="1, 2, 3, 4 or all.")
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--plan", "show_plan", is_flag=True, help="List the stages and their GPU-hours; run none.")
@MAX_PARALLEL_OPTION
@SBATCH_OPTION
@CONTAINER_OPTION
@click.option("--dry-run", is_flag=True, help="Print the commands that would run.")
@pass_config
def reproduce(
    cfg: Config,
    post: str,
    cluster: str,
    show_plan: bool,
    max_parallel: int,
    extra: tuple[str, ...],
    container: str,
    dry_run: bool,
) -> None:
    """Rebuild a post at full scale (committed params.yaml), its tables and figures, then diff them against the
    published numbers.

    Before the first stage a preflight checks data, pinned snapshots in the cache and GPUs (SLURM: also the image and
    the partition limits) and stops with one line per missing thing.
    """
    targets = post_targets(post)
    root = Path.cwd()
    stages = jobs.plan(root, targets) if jobs.has_pipeline(root) else list(targets)
    click.echo(format_plan(plan_costs(stages, cfg)))  # what is about to run, and its cost, before anything runs
    if show_plan:
        return
    if cluster == "slurm":
        cmd = ["sycorec", "slurm", "submit", "--stages", ",".join(targets), "--max-parallel", str(max_parallel)]
        cmd += ["--container", container, *(f"--sbatch-option={option}" for option in extra)]
        cmd += ["--dry-run"] if dry_run else ["--wait"]
    else:
        cmd = ["dvc", "repro", *targets]
    # the report stage's command itself: `dvc repro report` would first rebuild every model of every post
    report = ["sycorec", "report", "build"]
    diff = ["sycorec", "report", "diff", "--post", post]
    if dry_run:
        for step in (cmd, report, diff):
            click.echo(" ".join(step))
        return
    if cluster == "local" and stages:
        preflight.check_local(stages, cfg)  # the SLURM submit runs its own, against the site's cache
    if subprocess.run(cmd).returncode:
        raise SycorecError(f"{' '.join(cmd[:2])} failed for post {post}")
    for directory in prune_committed_checkpoints(root):  # only now: every model of the chain is committed
        click.echo(f"removed {directory}: its model is committed")
    if subprocess.run(report).returncode:
        raise SycorecError(f"post {post}: `sycorec report build` failed")
    if subprocess.run(diff).returncode:
        raise SycorecError(f"post {post}: regenerated numbers differ from the published ones (see the table above)")
