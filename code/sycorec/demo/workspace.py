"""Run the DVC pipeline under a profile in a scratch copy, so the committed params.yaml, dvc.lock and
full-scale outputs are never touched by the demo."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import yaml

from sycorec.config import resolve_raw, validate
from sycorec.demo.cpushare import SHARE_ENV, cpus, threads_for, write_share
from sycorec.demo.warmstart import warm_server
from sycorec.errors import SycorecError
from sycorec.io import write_text_atomic

# What a stage may read from the project: the pipeline definition, profiles and the package's code and data files.
SYNCED = ("dvc.yaml", "profiles", "code/sycorec", "requirements/cluster.lock", "slurm/stages.yaml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def stage_bin(workdir: Path) -> Path:
    """A folder holding the demo's `sycorec` (sycorec.demo_stage) for this interpreter: first on the stages' PATH."""
    folder = workdir / ".sycorec" / "bin"
    script = f"#!{sys.executable}\nfrom sycorec.demo_stage import main\n\nmain()\n"
    target = folder / "sycorec"
    if not target.is_file() or target.read_text() != script:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, script)
        target.chmod(0o755)
    return folder


def _env(workdir: Path) -> dict[str, str]:
    """This environment, with the demo's `sycorec` and then this interpreter's tools first on PATH."""
    path = os.pathsep.join([str(stage_bin(workdir)), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path)


def _dvc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env or _env(cwd))


def _sync_tree(src: Path, dst: Path) -> None:
    """Copy files whose bytes differ; leave identical files alone so DVC sees no change."""
    if src.is_file():
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        return
    names = set(IGNORED(str(src), [p.name for p in src.iterdir()]))
    wanted = {p.name for p in src.iterdir()} - names
    for name in wanted:
        _sync_tree(src / name, dst / name)
    if dst.is_dir():  # files deleted from the project disappear from the copy too
        for stale in {p.name for p in dst.iterdir()} - wanted - names:
            target = dst / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def prepare_workspace(project: Path, workdir: Path, profile: str, edit: Callable[[dict], dict] | None = None) -> Path:
    """Create or refresh `workdir`: synced pipeline + code, and params.yaml = the resolved profile (then `edit`)."""
    raw = resolve_raw(project / "params.yaml", profile)
    cfg = validate(edit(raw) if edit else raw)
    workdir.mkdir(parents=True, exist_ok=True)
    for rel in SYNCED:
        _sync_tree(project / rel, workdir / rel)
    params = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    target = workdir / "params.yaml"
    if not target.exists() or target.read_text() != params:
        write_text_atomic(target, params)
    init_sandbox(workdir)
    return workdir


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def init_sandbox(workdir: Path) -> None:
    """Make `workdir` a git + DVC repository of its own, so that DVC's experiment commands work there as in a
    checkout (`dvc exp run -S ...`, `dvc metrics diff`); what DVC caches and the stages' scratch stay out of git."""
    steps: list[tuple[str, ...]] = []
    if not (workdir / ".git").is_dir():
        if _git("init", "-q", cwd=workdir).returncode:
            raise SycorecError(f"git init failed in {workdir}")
        for key, value in (("user.name", "sycorec demo"), ("user.email", "demo@sycorec.invalid")):
            _git("config", key, value, cwd=workdir)
        # outputs/ but the RM calibration (a DVC metrics file: `dvc metrics diff` reads HEAD's from git)
        write_text_atomic(workdir / ".gitignore", "/outputs/*\n!/outputs/calibration/\n/data/\n/.sycorec/\n")
    if not (workdir / ".dvc").is_dir():
        steps += [("init", "-q"), ("config", "core.analytics", "false")]
    elif "no_scm" in (workdir / ".dvc" / "config").read_text():  # a demo made before it was a sandbox
        steps.append(("config", "--unset", "core.no_scm"))
    for args in steps:
        if _dvc(*args, cwd=workdir).returncode:
            raise SycorecError(f"dvc {' '.join(args)} failed in {workdir}")
    if _git("rev-parse", "--verify", "-q", "HEAD", cwd=workdir).returncode:  # dvclive cannot start in an empty repo
        commit_sandbox(workdir, "sycorec demo workspace")


def commit_sandbox(workdir: Path, message: str) -> None:
    """Commit the run (params, dvc.lock, uncached metrics and plots) as the baseline of the user's experiments."""
    _git("add", "-A", cwd=workdir)
    if _git("diff", "--cached", "--quiet", cwd=workdir).returncode:
        proc = _git("commit", "-q", "-m", message, cwd=workdir)
        if proc.returncode:
            raise SycorecError(f"git commit failed in {workdir}: {proc.stderr.strip()}")


def default_jobs() -> int:
    """Stages at once: one per CPU this process may use, at most four (the DAG is rarely wider)."""
    return max(1, min(4, cpus()))


def run_pipeline(workdir: Path, targets: tuple[str, ...] = (), warm: bool = True, jobs: int = 1) -> float:
    """`dvc repro` in `workdir`; with `warm`, stage commands fork from one warm server (sycorec.demo.warmstart).

    With `jobs` > 1, independent stages run at once, each as the SLURM chain runs it, with the CPUs split between them.
    """
    start = time.perf_counter()
    env = _env(workdir)
    if jobs > 1:  # stages then follow their share of the CPUs (sycorec.demo.cpushare), starting from an even split
        env.setdefault("OMP_NUM_THREADS", str(threads_for(jobs, cpus())))
        env[SHARE_ENV] = str(workdir / "outputs" / "logs" / "cpu_share")
    with warm_server(env) if warm else nullcontext(env) as env:
        if jobs > 1:
            from sycorec.cluster.slurm import load_stage_map, stage_entry

            stage_map = load_stage_map(workdir / "slurm")
            run_concurrently(
                workdir, targets, jobs, env, lambda stage: stage_entry(stage, stage_map).get("serial", False)
            )
        else:
            proc = _dvc("repro", *targets, cwd=workdir, env=env)
            if proc.returncode:
                raise SycorecError(
                    f"dvc repro failed in {workdir} (exit {proc.returncode}); see the stage output above"
                )
    return time.perf_counter() - start


def run_experiment(workdir: Path, sets: tuple[str, ...], name: str | None = None, warm: bool = True) -> float:
    """`dvc exp run -S KEY=VALUE ...` in a finished demo's sandbox: an experiment `dvc exp show` lists; with `warm`,
    its stages fork from the warm server (DVC runs them one at a time)."""
    if not (workdir / "dvc.lock").is_file():
        raise SycorecError(f"{workdir}: no finished demo to experiment on; run `make demo` first")
    start = time.perf_counter()
    args = ["exp", "run", *(arg for value in sets for arg in ("-S", value)), *(["-n", name] if name else [])]
    env = _env(workdir)
    with warm_server(env) if warm else nullcontext(env) as env:
        proc = _dvc(*args, cwd=workdir, env=env)
    if proc.returncode:
        raise SycorecError(f"dvc exp run failed in {workdir} (exit {proc.returncode}); see the stage output above")
    return time.perf_counter() - start


def run_concurrently(
    workdir: Path, targets: tuple[str, ...], jobs: int, env: dict[str, str], serial: Callable[[str], bool]
) -> None:
    """Start every planned stage whose upstream stages have finished, up to `jobs` at once.

    Each runs `dvc --wait-for-lock repro --single-item <stage>` (DVC takes its repo lock only around collecting and
    committing), its output in outputs/logs/<stage>.log. Stages for which `serial` holds (they share one cache file)
    run one at a time, as on the cluster. After a failure no new stage starts.
    """
    from sycorec.cluster.slurm import plan_graph, stage_command

    pending = dict(plan_graph(workdir, targets))
    logs = workdir / "outputs" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done: set[str] = set()
    failed: list[str] = []
    share = Path(env[SHARE_ENV]) if SHARE_ENV in env else None
    shared = -1  # the count the share file holds
    one_at_a_time = {name for name in pending if serial(name)}
    while running or (pending and not failed):
        for name in [n for n, upstream in pending.items() if done.issuperset(upstream)] if not failed else []:
            if len(running) == jobs:
                break
            if name in one_at_a_time and one_at_a_time.intersection(running):
                continue
            with open(logs / f"{name}.log", "wb") as log:
                cmd = [sys.executable, "-m", *stage_command(name)]
                running[name] = (
                    subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=log),
                    time.perf_counter(),
                )
            del pending[name]
            print(f"started  {name}", flush=True)
        if share and shared != len(running):  # the stages re-read it every second: write only changes
            shared = len(running)
            write_share(share, shared)
        time.sleep(0.1)
        for name, (proc, began) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            seconds = time.perf_counter() - began
            if proc.returncode:
                failed.append(name)
                print(f"FAILED   {name} ({seconds:.1f} s), its output:", flush=True)
                sys.stdout.write((logs / f"{name}.log").read_text(errors="replace")[-4000:])
            else:
                done.add(name)
                print(f"finished {name} ({seconds:.1f} s)", flush=True)
    if failed:
        raise SycorecError(f"stage {failed[0]} failed in {workdir}; its output: {logs / (failed[0] + '.log')}")
