"""Cluster commands: `sycorec prefetch` (login node, network) and `sycorec slurm render|submit`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sycorec.clikit import pass_config
from sycorec.cluster import prefetch as fetching
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import PARAMS_FILE, Config
from sycorec.errors import SycorecError
from sycorec.hub import PIN_COMMAND, hub_offline

MAX_PARALLEL_OPTION = click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="SLURM: how many jobs of the chain may run at once (independent stages side by side, one node each).",
)

# Shared with `sycorec reproduce`, which passes them on to `sycorec slurm submit`.
SBATCH_OPTION = click.option(
    "--sbatch-option",
    "extra",
    multiple=True,
    envvar="SYCOREC_SBATCH_OPTIONS",
    help="An `#SBATCH` option for every job, e.g. --qos=high or --gres=gpu:h100:4 (repeatable; "
    "$SYCOREC_SBATCH_OPTIONS: several, separated by spaces).",
)
CONTAINER_OPTION = click.option(
    "--container",
    type=click.Choice(jobs.CONTAINERS),
    envvar="SYCOREC_CONTAINER",
    default="apptainer",
    show_default=True,
    help="How a job runs the stage: in the Apptainer image, or `none`: the checkout's own .venv (shared storage).",
)


@click.command()
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=fetching.MANIFEST,
    show_default=True,
    help="JSON file recording the commit each revision resolved to.",
)
@click.option("--only", multiple=True, metavar="REPO_ID", help="Fetch only this pinned repo (repeatable).")
@click.option("--dry-run", is_flag=True, help="List what would be fetched; download and write nothing.")
@click.option("--pin", is_flag=True, help="Write each resolved commit into params.yaml in place of a branch name.")
@pass_config
def prefetch(cfg: Config, manifest: Path, only: tuple[str, ...], dry_run: bool, pin: bool) -> None:
    """Download every pinned model and dataset into the HF cache (run on a node with network)."""
    items = fetching.select(fetching.pinned_items(cfg), only)
    if not items:
        click.echo(f"nothing to prefetch: profile {cfg.profile} uses no hub models or datasets")
        return
    if dry_run:
        click.echo(fetching.describe(items))
        click.echo(f"manifest: {manifest}")
        return
    if hub_offline():
        raise SycorecError("prefetch needs network but HF_HUB_OFFLINE=1; run it on a login node without that setting")
    document = fetching.prefetch(items, manifest)
    fetched = {(i.repo_type, i.repo_id) for i in items}
    moving = {}
    for record in document["items"]:
        if (record["repo_type"], record["repo_id"]) in fetched:
            click.echo(f"{record['repo_type']:<8} {record['repo_id']}@{record['revision']} -> {record['commit']}")
            if record["revision"] != record["commit"]:
                moving[fetching.PARAM_KEYS[record["role"]]] = record["commit"]
    click.echo(f"manifest: {manifest}")
    params = Path((click.get_current_context().find_root().obj or {}).get("params", PARAMS_FILE))
    if pin:
        for key in fetching.pin_revisions(params, moving):
            click.echo(f"pinned {key}: {moving[key]} in {params} (review `git diff {params}`, then commit it)")
    else:
        for key, commit in moving.items():
            click.echo(f"not a commit: {key} (resolved to {commit}); `{PIN_COMMAND}` writes it into {params}")


def site_options(func):
    """Host-side paths and sbatch options shared by `render` and `submit` (environment variables give defaults)."""
    options = [
        click.option("--sif", envvar="SYCOREC_SIF", default="sycorec.sif", show_default=True, help="Apptainer image."),
        click.option(
            "--hf-cache",
            envvar="HF_HOME",
            default=str(Path("~/.cache/huggingface").expanduser()),
            show_default="$HF_HOME or ~/.cache/huggingface",
            help="Host HF cache, bound at /cache/hf (fill it with `sycorec prefetch`).",
        ),
        click.option(
            "--hf-hub-cache",
            envvar="HF_HUB_CACHE",
            default=None,
            show_default="$HF_HUB_CACHE or <hf-cache>/hub",
            help="Host HF hub cache, bound at /cache/hf/hub (set when it lives apart from $HF_HOME).",
        ),
        click.option("--log-dir", default=str(jobs.LOG_DIR), show_default=True, help="Where job logs go."),
        click.option("--partition", envvar="SYCOREC_PARTITION", default=None, help="sbatch --partition."),
        click.option("--account", envvar="SYCOREC_ACCOUNT", default=None, help="sbatch --account."),
        SBATCH_OPTION,
        CONTAINER_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _site(
    sif: str,
    hf_cache: str,
    hf_hub_cache: str | None,
    log_dir: str,
    partition,
    account,
    extra,
    container: str,
) -> jobs.Site:
    repo = Path.cwd().resolve()

    def absolute(value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else repo / path

    return jobs.Site(
        repo=repo,
        sif=absolute(sif),
        hf_cache=absolute(hf_cache),
        hf_hub_cache=absolute(hf_hub_cache) if hf_hub_cache else None,
        log_dir=absolute(log_dir),
        partition=partition,
        account=account,
        extra_sbatch=tuple(extra),
        container=container,
    )


@click.group()
def slurm() -> None:
    """Render and submit one SLURM job per DVC stage (apptainer exec --nv, offline HF cache)."""


@slurm.command("render")
@click.argument("stage")
@site_options
@pass_config
def render(cfg: Config, stage: str, **site) -> None:
    """Print the sbatch script of one DVC stage, e.g. `train_grpo@v3`."""
    jobs.check_stages([stage], Path.cwd())
    click.echo(jobs.render(stage, cfg, _site(**site)), nl=False)


def planned_stages(targets: list[str], upstream: bool, run_all: bool, root: Path) -> list[tuple[str, list[str]]]:
    """(stage, planned stages it needs) in run order: the targets' upstream closure as `dvc repro` would run it."""
    jobs.check_stages(targets, root)
    if upstream and jobs.has_pipeline(root):
        return jobs.plan_graph(root, targets, skip_up_to_date=not run_all)
    return [(name, []) for name in targets]


@slurm.command("submit")
@click.option("--stages", required=True, help="Comma-separated DVC stage names (targets).")
@click.option(
    "--upstream/--no-upstream",
    default=True,
    show_default=True,
    help="Also run the stages the targets depend on, dependencies first (as `dvc repro` would).",
)
@click.option("--all", "run_all", is_flag=True, help="Submit up-to-date stages too (default: skip them).")
@MAX_PARALLEL_OPTION
@click.option("--wait", is_flag=True, help="Then poll sacct until every job completed (interrupt and re-run freely).")
@click.option(
    "--poll-s",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between sacct polls (--wait).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the rendered scripts only: no preflight, nothing submitted or written."
)
@site_options
@pass_config
def submit(
    cfg: Config,
    stages: str,
    upstream: bool,
    run_all: bool,
    max_parallel: int,
    wait: bool,
    poll_s: float,
    dry_run: bool,
    **site,
) -> None:
    """Check everything the stages need, then submit one job per DVC stage as a chain of SLURM dependencies.

    Stages whose job is already queued or running are not submitted again; the login node only submits.
    """
    targets = [name.strip() for name in stages.split(",") if name.strip()]
    if not targets:
        raise SycorecError("--stages: no stage names given")
    root = Path.cwd()
    order = planned_stages(targets, upstream, run_all, root)
    if not order:
        click.echo("every stage is up to date: nothing to submit")
        return
    where = _site(**site)
    stage_map = jobs.load_stage_map()
    planned = [
        jobs.Planned(name, tuple(ups), jobs.render(name, cfg, where), jobs.stage_job(name, cfg, stage_map).serial)
        for name, ups in order
    ]
    if dry_run:
        for job in planned:
            after = f"  (after {', '.join(job.upstream)})" if job.upstream else ""
            click.echo(f"==> {jobs.SCRIPT_DIR / (jobs.job_name(job.stage) + '.sbatch')} <=={after}")
            click.echo(job.script)
        return
    preflight.check_slurm([job.stage for job in planned], cfg, where, root, max_parallel=max_parallel)

    def report(job: jobs.Submitted) -> None:
        if not job.new:
            click.echo(f"{job.stage}: job {job.job_id} already queued or running, not submitted again")
        else:
            click.echo(f"{job.stage}: job {job.job_id}" + (f" after {','.join(job.after)}" if job.after else ""))

    submitted = jobs.submit(planned, where, max_parallel=max_parallel, on_submit=report)
    if wait:
        jobs.wait(
            submitted,
            where,
            poll_s=poll_s,
            on_done=lambda job, state: click.echo(f"{job.stage}: job {job.job_id} {state}"),
        )
