"""Cluster kit: offline-aware hub resolution, prefetch, SLURM rendering/submission, the MFU benchmark on CPU."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import constants as hf_constants

from sycorec import hub
from sycorec.cli import main
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config
from sycorec.errors import HardwareError, MissingInputError

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cfg(run_root):
    return load_config(run_root / "params.yaml")


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ---- hub: offline-aware resolution -------------------------------------------------------------------------------


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


# ---- prefetch (huggingface_hub patched: no network) --------------------------------------------------------------


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


# ---- slurm -------------------------------------------------------------------------------------------------------

SITE = ("--sif", "/images/sycorec.sif", "--hf-cache", "/scratch/hf")


def test_render_runs_the_stage_in_the_container_with_binds_gpus_and_offline_env(run_root, cfg):
    result = invoke("slurm", "render", "train_grpo@v3", *SITE, "--partition", "gengpu")
    assert result.exit_code == 0
    script = result.output
    assert f"#SBATCH --gres=gpu:{cfg.train.grpo.versions['v3'].num_gpus}" in script
    for needle in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --partition=gengpu",
        f"srun --kill-on-bad-exit=1 --ntasks=1 --cpus-per-task={8 * cfg.train.grpo.versions['v3'].num_gpus}",
        "apptainer exec --nv --cleanenv",
        '--bind "$REPO:/work,$HF_CACHE:/cache/hf,$HF_HUB:/cache/hf/hub"',
        "HF_HUB=/scratch/hf/hub",
        "--env HF_HUB_CACHE=/cache/hf/hub",
        "#SBATCH --kill-on-invalid-dep=yes",
        "SIF=/images/sycorec.sif",
        "HF_CACHE=/scratch/hf",
        f"REPO={run_root.resolve()}",
        "--env PYTHONNOUSERSITE=1",
        "--env HF_HUB_OFFLINE=1",
        "scontrol requeue",
        "dvc --wait-for-lock repro --single-item train_grpo@v3",
    ):
        assert needle in script, needle


def test_rendering_is_deterministic_and_valid_bash(run_root):
    first, second = (
        invoke("slurm", "render", "judge@sft", *SITE).output,
        invoke("slurm", "render", "judge@sft", *SITE).output,
    )
    assert first == second
    assert subprocess.run(["bash", "-n"], input=first, text=True, capture_output=True).returncode == 0


def test_gpu_counts_follow_params(cfg):
    stage_map = jobs.load_stage_map()
    assert jobs.stage_job("train_sft", cfg, stage_map).gpus == cfg.train.common.num_gpus
    assert jobs.stage_job("train_pref@simpo", cfg, stage_map).gpus == cfg.train.common.num_gpus
    assert jobs.stage_job("train_grpo@v4", cfg, stage_map).gpus == cfg.train.grpo.versions["v4"].num_gpus == 2
    assert jobs.stage_job("generate@dpo", cfg, stage_map).gpus == cfg.generation.tensor_parallel_size
    assert jobs.stage_job("judge@grpo_v2", cfg, stage_map).gpus == cfg.judge.tensor_parallel_size
    assert jobs.stage_job("judge@grpo_v2", cfg, stage_map).serial
    assert jobs.stage_job("probe_analyze@R6", cfg, stage_map).gpus == 0  # it uses none
    report = jobs.stage_job("report", cfg, stage_map)
    assert (report.gpus, report.group) == (0, "report")


def test_every_dvc_stage_has_a_slurm_job(run_root, cfg):
    names = jobs.dvc_stage_names(ROOT)
    if names is None:
        pytest.skip("no dvc.yaml yet")
    site = jobs.Site(run_root, run_root / "s.sif", run_root / "hf", run_root / "dvc", run_root / "logs")
    assert names
    stage_map = jobs.load_stage_map()
    for stage in sorted(names):
        script = jobs.render(stage, cfg, site)
        job = jobs.stage_job(stage, cfg, stage_map)
        assert f"dvc --wait-for-lock repro --single-item {stage}" in script
        assert ("--nv" in script) == ("--gres=gpu:" in script)
        assert f"#SBATCH --cpus-per-task={job.cpus}" in script
        assert f"srun --kill-on-bad-exit=1 --ntasks=1 --cpus-per-task={job.cpus} " in script
        assert "#SBATCH --kill-on-invalid-dep=yes" in script
        assert "$HF_HUB:/cache/hf/hub" in script and f"HF_HUB={run_root / 'hf' / 'hub'}" in script
        assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0


def test_cpu_stage_gets_no_gpu(run_root):
    script = invoke("slurm", "render", "report", *SITE).output
    assert "--gres" not in script and "--nv" not in script
    assert "apptainer exec --cleanenv" in script


def test_unknown_stage_is_one_line_error(run_root):
    result = CliRunner().invoke(main, ["slurm", "render", "nonsense", *SITE])
    assert result.exit_code == 2
    assert result.output.startswith("error: stage 'nonsense' has no SLURM mapping")


def test_submit_dry_run_prints_every_script_in_order_and_writes_nothing(run_root):
    result = invoke("slurm", "submit", "--stages", "train_sft,generate@sft,judge@sft", "--dry-run", *SITE)
    assert result.exit_code == 0
    out = result.output
    positions = [out.index(f"repro --single-item {s}") for s in ("train_sft", "generate@sft", "judge@sft")]
    assert positions == sorted(positions)
    assert out.count("#!/bin/bash") == 3
    assert "==> outputs/slurm/generate-sft.sbatch <==" in out
    assert not (run_root / "outputs").exists()


def test_stage_names_are_checked_against_dvc_yaml(run_root):
    (run_root / "dvc.yaml").write_text(
        "stages:\n  generate:\n    foreach: [sft, dpo]\n    do:\n      cmd: echo ${item}\n"
        "  judge:\n    cmd: echo judge\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    assert jobs.dvc_stage_names(run_root) == {"generate@sft", "generate@dpo", "judge"}
    bad = CliRunner().invoke(main, ["slurm", "submit", "--stages", "generate@sft,generate@ipo", "--dry-run", *SITE])
    assert bad.exit_code == 2 and "generate@ipo" in bad.output


@pytest.mark.slow  # runs a DVC pipeline
def test_plan_runs_upstream_stages_first_and_skips_up_to_date_ones(run_root):
    (run_root / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: echo a > a.txt, outs: [a.txt]}\n"
        "  b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n"
        "  c: {cmd: cp b.txt c.txt, deps: [b.txt], outs: [c.txt]}\n"
        "  other: {cmd: echo o > o.txt, outs: [o.txt]}\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    assert jobs.plan(run_root, ["c"]) == ["a", "b", "c"]
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "a"], cwd=run_root, check=True)
    assert jobs.plan(run_root, ["c"]) == ["b", "c"]
    assert jobs.plan(run_root, ["c"], skip_up_to_date=False) == ["a", "b", "c"]
    (run_root / "a.txt").write_text("changed\n")  # a re-runs, so everything downstream of it does too
    assert jobs.plan(run_root, ["c", "other"]) == ["a", "b", "c", "other"]


def test_plan_reads_the_workspace_it_is_given_from_any_directory(run_root, tmp_path, monkeypatch):
    # the seed sweep plans each seed's workspace from the project, whose dvc.yaml has the same stage names
    (run_root / "dvc.yaml").write_text("stages:\n  a: {cmd: echo a > a.txt, outs: [a.txt]}\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "dvc.yaml").write_text(
        "stages:\n  z: {cmd: echo z > z.txt, outs: [z.txt]}\n  a: {cmd: cat z.txt, deps: [z.txt]}\n"
    )
    monkeypatch.chdir(elsewhere)
    assert jobs.plan(run_root, ["a"]) == ["a"]


# ---- benchmark scripts -------------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the benchmark script in a fresh process
def test_sft_step_mfu_runs_on_cpu(tmp_path):
    out = tmp_path / "mfu.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench/sft_step_mfu.py"),
        "--cpu",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step time:" in done.stdout and "MFU (LoRA accounting):" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["step_time_s"] > 0 and 0 < figures["mfu"] < 1
    assert figures["n_lora"] > 0 and figures["n_frozen_matmul"] > figures["n_lora"]
    # LoRA accounting: frozen matmuls 4 FLOPs/param/token, LoRA 6, attention scores 12·L·s·d_attn per token.
    shape, tokens = figures["shape"], figures["batch"] * figures["seq_len"]
    flops = (4 * figures["n_frozen_matmul"] + 6 * figures["n_lora"]) * tokens
    flops += 12 * shape["layers"] * figures["seq_len"] * shape["d_attn"] * tokens
    assert figures["mfu"] == pytest.approx(flops / figures["step_time_s"] / (figures["peak_tflops"] * 1e12))


def test_gpu_smoke_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench/gpu_smoke.sh")], capture_output=True).returncode == 0


def _mfu_module():
    spec = importlib.util.spec_from_file_location("sft_step_mfu", ROOT / "bench/sft_step_mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "label", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H200", "H200", 989.4),
    ],
)
def test_mfu_peak_comes_from_the_device_name(name, label, tflops):
    assert _mfu_module().device_peak(name) == (label, tflops)


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "Tesla T4"])
def test_mfu_refuses_an_unknown_device(name):
    with pytest.raises(SystemExit, match="no peak FLOP/s known"):
        _mfu_module().device_peak(name)


def test_mfu_script_imports_nothing_beyond_its_wheels():
    source = (ROOT / "bench/sft_step_mfu.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, flags=re.MULTILINE))
    assert imported - set(sys.stdlib_module_names) == {"torch", "peft", "transformers"}


def _closure(names: list[str]) -> set[str]:
    """Installed distributions `names` need (markers evaluated here, extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_mfu_wheel_list_is_the_dependency_closure_at_the_locked_versions():
    from packaging.utils import canonicalize_name

    def pins(path: Path) -> dict[str, str]:
        lines = [line.split()[0] for line in path.read_text().splitlines() if line and line[0].isalnum()]
        return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if "==" in line)}

    wheels, lock = pins(ROOT / "bench/mfu_wheels.txt"), pins(ROOT / "requirements/cluster.lock")
    needed = _closure(["transformers", "peft", "accelerate", "safetensors"]) - _closure(["torch"])
    assert set(wheels) == needed
    assert {name: lock[name] for name in wheels} == wheels


def test_gpu_smoke_has_an_mfu_only_mode_without_sycorec():
    script = (ROOT / "bench/gpu_smoke.sh").read_text()
    mode = script[script.index("if ((mfu_only)); then") : script.index("exit 0", script.index("if ((mfu_only))"))]
    assert "bench/sft_step_mfu.py" in mode and "sycorec" not in mode
    assert script.index("if ((mfu_only)); then") < script.index("from sycorec")
