"""The plan: each post's stages and GPU-hours, the probing stages, what every stage reads."""

from __future__ import annotations

import functools
import operator
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sycorec.cli import main
from sycorec.config import load_config

ROOT = Path(__file__).resolve().parents[1]


# ---- the plan --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # plans every post through DVC
def test_plan_prints_each_post_s_stages_and_the_total(tmp_path, monkeypatch):
    root = tmp_path / "copy"
    root.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, root / rel)
    for rel in ("profiles", "slurm"):
        shutil.copytree(ROOT / rel, root / rel)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    monkeypatch.chdir(root)
    plans = {}
    for post in ("1", "4", "all"):
        result = CliRunner().invoke(main, ["reproduce", "--post", post, "--plan"], catch_exceptions=False)
        assert result.exit_code == 0
        plans[post] = result.output
        lines = result.output.splitlines()[1:-1]
        rows = [line.split(None, 6) for line in lines if not line.startswith("+ ")]
        gpu_rows = [r for r in rows if int(r[1])]
        assert gpu_rows and all(r[6].split(":")[0] in {"study", "derived", "estimate"} for r in gpu_rows)
        printed = float(re.search(r"on GPUs: ([0-9.]+) GPU-hours in total$", result.output.strip()).group(1))
        assert printed == pytest.approx(sum(float(r[5]) for r in rows), abs=0.05 + 0.005 * len(rows))
        # every judge job loads the 72B judge; every trained model is hashed when its job commits it
        assert all(float(r[3]) > 0 for r in rows if r[0].startswith("judge@"))
        assert all(float(r[4]) > 0 for r in rows if r[0].startswith("train_grpo@"))
        sources = [line.split("(", 1)[1] for line in lines if line.startswith("+ ")]
        assert [s.split(":")[0] for s in sources] == ["estimate", "measured"]
    for stage in ("train_grpo@v4", "judge@grpo_v4", "probe_analyze@R6", "train_rm", "rm_calibrate"):
        assert re.search(rf"^{re.escape(stage)} ", plans["all"], flags=re.MULTILINE), stage
    # post 1 judges, scores and trains no model it neither reports nor probes: its probing run is R3030
    cfg = load_config(root / "params.yaml")
    assert re.search(r"^probe_analyze@R3030 ", plans["1"], flags=re.MULTILINE)
    for model in set(cfg.models) - {"base", "sft", "dpo"} - set(cfg.probing.runs["R3030"].models):
        assert f"@{model} " not in plans["1"] and f"@{model.removeprefix('grpo_')} " not in plans["1"], model
    for stage in ("train_grpo@", "train_rm ", "rm_calibrate ", "probe_analyze@R6 "):
        assert not re.search(rf"^{re.escape(stage)}", plans["1"], flags=re.MULTILINE), stage
    assert not (root / "outputs").exists()


def test_probing_stages_follow_the_runs_models():
    """Each probing run's prompt stage depends on exactly its models' verdicts, and probe_extract has one item per
    (run, model): dvc.yaml spells both out (DVC cannot expand a list into deps), params.yaml names them."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for profile in (None, "tiny"):
        runs = load_config(ROOT / "params.yaml", profile).probing.runs
        assert sorted(s for s in stages if s.startswith("probe_prompts_")) == sorted(f"probe_prompts_{r}" for r in runs)
        for run, spec in runs.items():
            deps = stages[f"probe_prompts_{run}"]["deps"]
            verdicts = [d for d in deps if d.startswith("${paths.results}/verdicts")]
            assert verdicts == [f"${{paths.results}}/verdicts/{m}.jsonl" for m in spec.models], run
        pairs = [{"run": run, "model": m} for run, spec in runs.items() for m in spec.models]
        assert list(stages["probe_extract"]["foreach"].values()) == pairs
        assert all(key == f"{p['run']}-{p['model']}" for key, p in stages["probe_extract"]["foreach"].items())


# Params sections a stage lists leaf by leaf, with the leaves it leaves out because another stage reads them: a leaf
# added to params.yaml fails here until its stage lists it or leaves it out on purpose
PROBE_INPUTS = {"templates", "sample_seed", "val_fraction", "batch_size", "max_length"}
LEAF_BY_LEAF = {
    ("train_rm", "train.rm"): {"calibration", "text_format"},  # rm_calibrate and the GRPO reward
    ("train_grpo", "train.grpo"): set(),  # versions: each version's own
    ("probe_analyze", "probing"): PROBE_INPUTS | {"beyond"},  # through prompts.json and the activations; probe_beyond's
    ("probe_beyond", "probing"): {"runs", "templates", "sample_seed", "val_fraction"},  # through the run's prompts.json
}


def test_stages_listing_leaves_miss_none_they_read():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for (name, section), left_out in LEAF_BY_LEAF.items():
        listed = {p.removeprefix(f"{section}.").split(".")[0] for p in stages[name].get("do", stages[name])["params"]}
        leaves = set(functools.reduce(operator.getitem, section.split("."), params))
        assert listed & leaves == leaves - left_out, name


def test_stage_commands_import_no_torch_until_they_need_it():
    """Each judge@<model> is its own DVC stage: with the rule judge (the demo) it must start cheaply."""
    code = "import sys, sycorec.cli, sycorec.evaluation.judge; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
