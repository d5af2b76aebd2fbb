"""`sycorec prefetch` (huggingface_hub patched: no network): resolved commits, `--pin`, `--only`, dry runs, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import constants as hf_constants

from cluster_support import invoke
from sycorec.cli import main
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    calls = []

    def repo_info(self, repo_id, repo_type=None, revision=None):
        pinned = revision and re.fullmatch(r"[0-9a-f]{40}", revision)
        return SimpleNamespace(sha=revision if pinned else f"{abs(hash(repo_id)) % 10**8:040d}")

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None, **_):
        calls.append((repo_id, repo_type, revision, allow_patterns))
        commit = repo_info(None, repo_id, revision=revision).sha
        path = tmp_path / "hub" / repo_id.replace("/", "--") / "snapshots" / commit
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return calls


def test_prefetch_records_resolved_commits(run_root, fake_hub):
    cfg = load_config(run_root / "params.yaml")
    result = invoke("prefetch", "--manifest", "m.json")
    assert result.exit_code == 0, result.output
    items = json.loads((run_root / "m.json").read_text())["items"]
    configured = {
        ("model", "Qwen/Qwen3-8B", cfg.base_model.revision),
        ("model", "Qwen/Qwen2.5-72B-Instruct", cfg.judge.revision),
        ("dataset", "truthfulqa/truthful_qa", cfg.data.truthfulqa.hf_revision),
        ("dataset", "JNK789/sycophancy-recovery-data", cfg.data.training_data.hf_revision),
    }
    assert {(i["repo_type"], i["repo_id"], i["revision"]) for i in items} == configured
    assert all(len(i["commit"]) == 40 and Path(i["snapshot"]).name == i["commit"] for i in items)
    # The models and TruthfulQA are pinned to commits; the training data's commit is not on record, so prefetch says
    # which key is not a commit and the command that pins it (full scale refuses a branch name).
    unpinned = [i for i in items if i["revision"] != i["commit"]]
    assert [i["repo_id"] for i in unpinned] == ["JNK789/sycophancy-recovery-data"]
    assert f"not a commit: data.training_data.hf_revision (resolved to {unpinned[0]['commit']})" in result.output
    assert "`sycorec prefetch --pin` writes it into params.yaml" in result.output
    assert "base_model.revision" not in result.output
    assert load_config(run_root / "params.yaml") == cfg  # without --pin, params.yaml is left alone
    # Downloads go by the configured revision (so a branch's ref is cached for offline lookups), models without code.
    assert {revision for _, _, revision, _ in fake_hub} == {revision for *_, revision in configured}
    model_patterns = [patterns for _, kind, _, patterns in fake_hub if kind == "model"]
    assert model_patterns and all("*.safetensors" in p and "*.py" not in p for p in model_patterns)


def test_prefetch_pin_writes_the_resolved_commit_and_the_preflight_then_passes(run_root, fake_hub, empty_hf_cache):
    """On the committed params.yaml: the training data is a need of `prepare`, unpinned until `prefetch --pin`."""
    before = (run_root / "params.yaml").read_text()
    stage_map = jobs.load_stage_map()
    needs = preflight.stage_needs("prepare", load_config(run_root / "params.yaml"), stage_map)
    unpinned = preflight.pin_problems(needs.hub, load_config(run_root / "params.yaml"))
    assert ["data.training_data.hf_revision is 'main', not a commit" in p for p in unpinned] == [True]
    result = invoke("prefetch", "--pin", "--manifest", "m.json")
    assert result.exit_code == 0, result.output
    commit = {i["role"]: i["commit"] for i in json.loads((run_root / "m.json").read_text())["items"]}["training_data"]
    after = (run_root / "params.yaml").read_text()
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]
    assert changed == [("    hf_revision: main", f"    hf_revision: {commit}")]  # one line; comments kept
    assert f"pinned data.training_data.hf_revision: {commit}" in result.output
    cfg = load_config(run_root / "params.yaml")
    assert cfg.data.training_data.hf_revision == commit
    assert preflight.pin_problems(preflight.stage_needs("prepare", cfg, stage_map).hub, cfg) == []
    again = invoke("prefetch", "--pin", "--manifest", "m.json")  # pinned: nothing more to write
    assert again.exit_code == 0 and "pinned" not in again.output
    assert (run_root / "params.yaml").read_text() == after


def test_prefetch_only_merges_into_the_manifest(run_root, fake_hub):
    assert invoke("prefetch", "--manifest", "m.json", "--only", "Qwen/Qwen3-8B").exit_code == 0
    assert invoke("prefetch", "--manifest", "m.json", "--only", "Qwen/Qwen2.5-72B-Instruct").exit_code == 0
    items = json.loads((run_root / "m.json").read_text())["items"]
    assert [i["repo_id"] for i in items] == ["Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen3-8B"]


def test_prefetch_dry_run_lists_and_writes_nothing(run_root, cfg, fake_hub):
    result = invoke("prefetch", "--dry-run")
    assert result.exit_code == 0
    assert f"Qwen/Qwen3-8B@{cfg.base_model.revision}" in result.output
    assert f"JNK789/sycophancy-recovery-data@{cfg.data.training_data.hf_revision}" in result.output
    assert fake_hub == []
    assert not (run_root / "outputs").exists()


def test_prefetch_refuses_offline_and_unknown_repos(run_root, fake_hub, monkeypatch):
    unknown = CliRunner().invoke(main, ["prefetch", "--only", "someone/else"])
    assert unknown.exit_code == 2 and "not a pinned input" in unknown.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = CliRunner().invoke(main, ["prefetch"])
    assert offline.exit_code == 2 and "needs network" in offline.output
    assert fake_hub == [] and not (run_root / "outputs").exists()


def test_prefetch_has_nothing_to_do_for_the_tiny_profile(run_root, fake_hub):
    result = invoke("--profile", "tiny", "prefetch")
    assert result.exit_code == 0 and "nothing to prefetch" in result.output
    assert fake_hub == []
