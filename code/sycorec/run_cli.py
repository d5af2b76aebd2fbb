"""`sycorec demo` and `sycorec reproduce`: the two whole-pipeline entry points behind `make`."""

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
from sycorec.workspace import default_jobs, prepare_workspace, run_pipeline

POSTS_FILE = Path(__file__).parent / "posts.yaml"


@click.command()
@click.option("--profile", default="tiny", show_default=True, help="Profile overlaid on params.yaml.")
@click.option("--dir", "workdir", default=".demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--cold", is_flag=True, help="Start every stage as a fresh process instead of forking a warm one.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Independent stages run at once, the CPUs split between them (default: one per CPU, at most 4).",
)
@click.option("--seeds", type=click.IntRange(min=1), help="Seed sweep: run the organism over this many seeds.")
@click.option("--first-seed", type=int, help="With --seeds: the first seed (default: params' seed).")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --seeds: merge this kernel path's runs into this record (e.g. code/sycorec/report/tiny_sweep.json).",
)
def demo(
    profile: str,
    workdir: str,
    cold: bool,
    jobs: int | None,
    seeds: int | None,
    first_seed: int | None,
    record: Path | None,
) -> None:
    """Run the whole DAG with a profile in a scratch copy; print where the results are.

    With --seeds N, run the organism's stages once per seed (params seed, seed+1, …) in <dir>/seed-<s>/ and print
    each reading's spread and how often each asserted direction holds.
    """
    project = Path.cwd()
    jobs = jobs or default_jobs()
    if seeds:
        _sweep(project, Path(workdir).resolve(), profile, seeds, first_seed, record, warm=not cold, jobs=jobs)
        return
    work = prepare_workspace(project, Path(workdir).resolve(), profile)
    seconds = run_pipeline(work, warm=not cold, jobs=jobs)
    click.echo(f"dvc repro: {seconds:.1f} s")
    click.echo(f"results: {work / 'results'}")


def _sweep(
    project: Path, root: Path, profile: str, n: int, first: int | None, record: Path | None, warm: bool, jobs: int
) -> None:
    import torch

    from sycorec import sweep
    from sycorec.config import load_config

    if first is None:
        first = load_config(project / "params.yaml", profile).seed
    runs = sweep.run_seeds(project, root, profile, range(first, first + n), warm, jobs)
    capability = torch.backends.cpu.get_cpu_capability()
    target = record or root / "sweep.json"
    click.echo(sweep.markdown(sweep.add_runs(target, capability, runs)), nl=False)
    click.echo(f"record: {target}")


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
    if subprocess.run(report).returncode:
        raise SycorecError(f"post {post}: `sycorec report build` failed")
    if subprocess.run(diff).returncode:
        raise SycorecError(f"post {post}: regenerated numbers differ from the published ones (see the table above)")
