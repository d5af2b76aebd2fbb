"""Fixtures that several test files share."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sycorec.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg() -> Config:
    """The repository's params.yaml, full profile."""
    return load_config(ROOT / "params.yaml")


@pytest.fixture
def run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: a run root with the repository's params, profiles and slurm/ data (no dvc.yaml)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(ROOT / "profiles", root / "profiles")
    shutil.copytree(ROOT / "slurm", root / "slurm")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache at `<HF_HOME>/hub` in place of the user's."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Batched LAPACK calls are latency-bound here; extra threads only contend on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-in sbatch/squeue/sacct/scontrol/sinfo on PATH (fake_slurm.py); yields their state directory."""
    from fake_slurm import install

    return install(tmp_path, monkeypatch)
