"""`sycorec demo`: the whole DAG on the CPU with a profile, in a scratch copy (`make demo`), or a seed sweep."""

from __future__ import annotations

from pathlib import Path

import click

from sycorec.demo.workspace import commit_sandbox, default_jobs, prepare_workspace, run_experiment, run_pipeline


@click.command()
@click.option("--profile", default="tiny", show_default=True, help="Profile overlaid on params.yaml.")
@click.option("--dir", "workdir", default=".demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--cold", is_flag=True, help="Start every stage as a fresh process instead of forking a warm one.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Independent stages run at once, the CPUs split between them (default: one per CPU, at most 4).",
)
@click.option(
    "--set",
    "-S",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Run a DVC experiment on the finished demo with these params (`dvc exp run -S`), its stages warm.",
)
@click.option("--name", help="With --set: the experiment's name.")
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
    sets: tuple[str, ...],
    name: str | None,
    seeds: int | None,
    first_seed: int | None,
    record: Path | None,
) -> None:
    """Run the whole DAG with a profile in a scratch copy; print where the results are.

    With --seeds N, run the organism's stages once per seed (params seed, seed+1, …) in <dir>/seed-<s>/ and print
    each reading's spread and how often each asserted direction holds. With --set KEY=VALUE, run a DVC experiment
    in the finished demo (its folder is a git + DVC sandbox: `dvc exp show`, `dvc metrics diff` work there).
    """
    project = Path.cwd()
    jobs = jobs or default_jobs()
    if seeds:
        _sweep(project, Path(workdir).resolve(), profile, seeds, first_seed, record, warm=not cold, jobs=jobs)
        return
    work = prepare_workspace(project, Path(workdir).resolve(), profile)
    if sets:
        seconds = run_experiment(work, sets, name, warm=not cold)
        click.echo(f"dvc exp run: {seconds:.1f} s; compare it: cd {workdir} && dvc exp show && dvc metrics diff")
        return
    seconds = run_pipeline(work, warm=not cold, jobs=jobs)
    commit_sandbox(work, f"sycorec demo --profile {profile}")
    click.echo(f"dvc repro: {seconds:.1f} s")
    click.echo(f"results: {work / 'results'}")


def _sweep(
    project: Path, root: Path, profile: str, n: int, first: int | None, record: Path | None, warm: bool, jobs: int
) -> None:
    import torch

    from sycorec.config import load_config
    from sycorec.demo import sweep
    from sycorec.report.sweep_record import markdown

    if first is None:
        first = load_config(project / "params.yaml", profile).seed
    runs = sweep.run_seeds(project, root, profile, range(first, first + n), warm, jobs)
    capability = torch.backends.cpu.get_cpu_capability()
    target = record or root / "sweep.json"
    click.echo(markdown(sweep.add_runs(target, capability, runs)), nl=False)
    click.echo(f"record: {target}")
