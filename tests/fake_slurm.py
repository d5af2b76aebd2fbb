"""Stand-in sbatch/squeue/sacct/scontrol/sinfo for the SLURM unit tests (the real scheduler is in slurm_support.py):
what the orchestrator sends them and how it reads their answers, not what SLURM does."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sycorec.cluster import slurm as jobs

# Fake SLURM: state lives in $FAKE_SLURM (a directory). sbatch logs its arguments and prints the next job id;
# squeue prints the `queue` file; sacct prints `<id>|<state>` from the `states` file; scontrol prints `partition`.
FAKES = {
    "sbatch": """
        n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo "$n" > "$FAKE_SLURM/next"
        echo "$n $*" >> "$FAKE_SLURM/sbatch.log"; echo "$n"
    """,
    "squeue": 'cat "$FAKE_SLURM/queue" 2>/dev/null || true',
    "sacct": 'echo "$*" >> "$FAKE_SLURM/sacct.log"; cat "$FAKE_SLURM/states" 2>/dev/null || true',
    "scontrol": 'cat "$FAKE_SLURM/partition"',
    "sinfo": "true",  # no node shapes: only the partition's own limits apply
}


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-ins first on PATH; their state directory (the `fake_slurm` fixture)."""
    state, bin_dir = tmp_path / "fake-slurm", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\nset -eu\n" + textwrap.dedent(body))
        path.chmod(0o755)
    (state / "partition").write_text("PartitionName=gpu Default=YES MaxTime=2-00:00:00 MaxMemPerNode=UNLIMITED\n")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return state


def sbatch_calls(state: Path) -> list[list[str]]:
    log = state / "sbatch.log"
    return [line.split() for line in log.read_text().splitlines()] if log.is_file() else []


def site(root: Path, **kw) -> jobs.Site:
    return jobs.Site(root, root / "s.sif", root / "hf", root / "logs", **kw)


def planned(*stages: tuple[str, tuple[str, ...]], serial: tuple[str, ...] = ()) -> list[jobs.Planned]:
    return [jobs.Planned(name, ups, f"#!/bin/bash\n# {name}\n", name in serial) for name, ups in stages]


CHAIN = (("train_sft", ()), ("train_pref@dpo", ("train_sft",)), ("generate@dpo", ("train_pref@dpo",)))
