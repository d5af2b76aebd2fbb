"""Offline-aware hub resolution and the GPU requirement: one line that names the fix, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster_support import SHA, files_under
from sycorec import hub
from sycorec.errors import HardwareError, MissingInputError


def test_offline_miss_names_the_prefetch_command_and_writes_nothing(run_root, cfg, empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = files_under(run_root)
    with pytest.raises(MissingInputError) as err:
        hub.resolve_snapshot(cfg.base_model.name, cfg.base_model.revision)
    message = str(err.value)
    assert "\n" not in message
    assert f"Qwen/Qwen3-8B@{cfg.base_model.revision}" in message
    assert "`sycorec prefetch --only Qwen/Qwen3-8B`" in message
    assert files_under(run_root) == before
    assert files_under(empty_hf_cache) == []


def test_offline_hit_returns_the_cached_snapshot(empty_hf_cache, monkeypatch):
    repo = empty_hf_cache / "models--Qwen--Qwen3-8B"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(hub.resolve_snapshot("Qwen/Qwen3-8B", "main")) == snapshot


def test_offline_incomplete_snapshot_is_reported(empty_hf_cache, monkeypatch):
    repo = empty_hf_cache / "models--Qwen--Qwen3-8B"
    (repo / "snapshots" / SHA).mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingInputError, match="incomplete"):
        hub.resolve_snapshot("Qwen/Qwen3-8B", SHA)


def test_require_gpu_fails_in_one_line_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HardwareError) as err:
        hub.require_gpu("train_sft", 4)
    assert "train_sft needs 4 CUDA GPU(s)" in str(err.value)
    assert "\n" not in str(err.value)
