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
from sycorec.errors import SycorecError
from sycorec.io import write_text_atomic
from sycorec.warmstart import warm_server

# What a stage may read from the project: the pipeline definition, profiles and the package's code and data files.
SYNCED = ("dvc.yaml", "profiles", "code/sycorec", "requirements/cluster.lock")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _env() -> dict[str, str]:
    """This environment, with its `sycorec` first on PATH for the stage commands."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _dvc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env or _env())


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
    if not (workdir / ".dvc").is_dir():
        for args in (("init", "--no-scm", "-q"), ("config", "core.analytics", "false")):
            if _dvc(*args, cwd=workdir).returncode:
                raise SycorecError(f"dvc {args[0]} failed in {workdir}")
    return workdir


def run_pipeline(workdir: Path, targets: tuple[str, ...] = (), warm: bool = True) -> float:
    """`dvc repro` in `workdir`; with `warm`, stage commands fork from one warm server (sycorec.warmstart)."""
    start = time.perf_counter()
    with warm_server(_env()) if warm else nullcontext(_env()) as env:
        proc = _dvc("repro", *targets, cwd=workdir, env=env)
    if proc.returncode:
        raise SycorecError(f"dvc repro failed in {workdir} (exit {proc.returncode}); see the stage output above")
    return time.perf_counter() - start
