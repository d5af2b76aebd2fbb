"""Every training stage runs a few steps on CPU through the same functions the CLI calls (tiny random Qwen3)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sycorec.config import load_config
from sycorec.errors import ConfigError, MissingInputError
from sycorec.io import WEIGHTS_RECORD, read_json
from train_support import REPO, inside_run_root, make_run_root, tiny_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    with inside_run_root(tmp_path_factory.mktemp("train") / "run") as path:
        yield path


@pytest.fixture(scope="module")
def sft_done(root):
    from sycorec.train.sft import train_sft

    return train_sft(tiny_config(root))


@pytest.fixture(scope="module")
def rm_done(root, sft_done):
    from sycorec.train.reward import calibrate_rm, train_rm

    cfg = tiny_config(root)
    _, metrics = train_rm(cfg)
    return metrics, calibrate_rm(cfg)


def _is_complete_model(path: Path) -> bool:
    names = ("config.json", "model.safetensors", "tokenizer_config.json", WEIGHTS_RECORD)  # the record keys caches
    return all((path / name).is_file() for name in names)


def _assert_lora_moved(model: Path, start: Path) -> None:
    """As TRL's own tests check: training changed the weights (PEFT starts every lora_B at zero)."""
    from safetensors.torch import load_file

    adapter = load_file(model / "adapter" / "adapter_model.safetensors")
    lora_b = {name: t for name, t in adapter.items() if "lora_B" in name}
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b.values())
    merged, before = load_file(model / "model.safetensors"), load_file(start / "model.safetensors")
    changed = [name for name, t in merged.items() if name in before and not torch.equal(t, before[name])]
    assert changed and all(("proj" in name) for name in changed), changed  # only LoRA-targeted weights merge


@pytest.mark.slow  # trains on the tiny model
def test_sft_saves_merged_model_adapter_curve_and_dvclive(root, sft_done):
    out = root / "outputs/models/sft"
    assert _is_complete_model(out)
    assert (out / "adapter/adapter_config.json").is_file()
    assert sft_done.trainer.state.global_step == 2
    curve = read_json(root / "results/curves/sft.json")
    assert curve["step"] == [0, 2]  # step 0 and every eval_every_steps
    assert {"sycophancy_gap", "p_correct_plain", "p_correct_pressured", "confidence_drop"} <= set(curve)
    assert (root / "outputs/dvclive/sft/plots/metrics/proxy/sycophancy_gap.tsv").is_file()
    assert any((root / "outputs/checkpoints/sft").glob("checkpoint-*"))  # kept until DVC commits the model
    summary = read_json(root / "results/train/sft.json")  # P1's "147 steps"
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    _assert_lora_moved(out, root / "outputs/models/base")


@pytest.mark.slow  # trains on the tiny model
@pytest.mark.parametrize("method", load_config(REPO / "params.yaml").train.preference.methods)
def test_preference_methods_train_from_sft(root, sft_done, method):
    from sycorec.train.preference import train_preference

    result = train_preference(tiny_config(root), method)
    assert result.trainer.state.global_step == 2
    assert _is_complete_model(root / "outputs/models" / method)
    _assert_lora_moved(root / "outputs/models" / method, root / "outputs/models/sft")
    assert read_json(root / f"results/curves/{method}.json")["step"] == [0, 2]
    losses = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    assert losses and all(loss == loss for loss in losses)  # no NaN
    summary = read_json(root / f"results/train/{method}.json")  # P1's DPO "193 steps, loss 0.007, margins 7.13"
    assert summary["steps"] == 2 and summary["final_loss"] == pytest.approx(losses[-1])
    assert 0.0 <= summary["reward_accuracy"] <= 1.0 and summary["reward_margin"] == summary["reward_margin"]


@pytest.mark.slow  # trains on the tiny model
def test_rm_metrics_and_calibration(root, rm_done):
    metrics, _ = rm_done
    assert set(metrics) >= {"train_accuracy", "train_margin", "val_accuracy", "val_margin"}
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and 0.0 <= metrics["first_train_accuracy"] <= 1.0
    assert read_json(root / "results/train/rm.json") == metrics
    assert "runtime_s" not in metrics
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(root / "outputs/models/rm")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
    stored = read_json(root / "outputs/calibration/calibration.json")
    assert stored["n"] == 4 * 2
    assert stored["min"] <= stored["threshold"] <= stored["max"]
    assert next(s for s in stored["splits"] if s["quantile"] == 0.5)["threshold"] == pytest.approx(stored["threshold"])


@pytest.mark.parametrize("version", ["v3", "v4"])  # continuous and binary reward
@pytest.mark.slow  # trains on the tiny model
def test_grpo_versions(root, rm_done, version):
    from sycorec.train.grpo import train_grpo

    _, summary = train_grpo(tiny_config(root), version)
    assert summary["steps"] == 3
    keys = ("reward_mean", "reward_std", "first_reward_mean", "first_reward_std", "kl", "completion_length")
    for key in (*keys, "frac_reward_zero_std"):
        assert summary[key] is not None
    assert "runtime_s" not in summary  # a DVC metrics file: wall-clock time goes to outputs/timings only
    # the study's path: checkpointing on while sampling in train mode; every rollout's degeneracy is recorded
    assert summary["gradient_checkpointing"] is True
    for key in ("rollout_distinct_token_share", "rollout_repeated_ngram_share"):
        assert 0.0 <= summary[key] <= 1.0 and 0.0 <= summary[f"{key}_last"] <= 1.0
    assert (root / f"outputs/dvclive/grpo_{version}/plots/metrics/train/rollout/distinct_token_share.tsv").is_file()
    if version == "v4":
        assert summary["threshold"] == read_json(root / "outputs/calibration/calibration.json")["threshold"]
        assert -1.0 <= summary["reward_mean"] <= 1.0
    assert read_json(root / f"results/train/grpo_{version}.json") == json.loads(json.dumps(summary))
    assert _is_complete_model(root / f"outputs/models/grpo_{version}")
    assert (root / f"outputs/dvclive/grpo_{version}/plots/metrics/train/reward.tsv").is_file()


@pytest.mark.slow  # trains on the tiny model
def test_relearn_writes_curve_and_adapter(root, sft_done):
    from sycorec.train.sft import train_relearn

    result = train_relearn(tiny_config(root), "base")
    assert result.curve["step"] == [0, 2, 3]  # every 2 steps, and the final model
    out = root / "outputs/models/relearn_base"
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert not any((root / "outputs/checkpoints").glob("relearn_base/checkpoint-*"))


@pytest.mark.slow  # trains on the tiny model
def test_keep_proxy_best_copies_the_best_adapter(root, sft_done):
    from sycorec.train.preference import train_preference

    cfg = tiny_config(root, train={"common": {"keep_proxy_best": True}})
    train_preference(cfg, "ipo")
    best = read_json(root / "outputs/models/ipo/proxy_best/proxy.json")
    curve = read_json(root / "results/curves/ipo.json")
    assert best["sycophancy_gap"] == min(curve["sycophancy_gap"])
    assert (root / "outputs/models/ipo/proxy_best/adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- bad configs fail before training


def test_grpo_without_rm_fails_before_training(tmp_path, monkeypatch):
    from sycorec.train.grpo import train_grpo

    root = make_run_root(tmp_path / "r")
    monkeypatch.chdir(root)
    cfg = tiny_config(root)
    with pytest.raises(MissingInputError, match="'sft' not found"):
        train_grpo(cfg, "v3")
    (root / "outputs/models/sft").mkdir(parents=True)
    (root / "outputs/models/sft/config.json").write_text("{}")
    with pytest.raises(MissingInputError, match="'rm' not found"):
        train_grpo(cfg, "v3")
    (root / "outputs/models/rm").mkdir(parents=True)
    (root / "outputs/models/rm/config.json").write_text("{}")
    with pytest.raises(MissingInputError, match="rm-calibrate"):
        train_grpo(cfg, "v4")
    with pytest.raises(ConfigError, match="unknown GRPO version 'v9'"):
        train_grpo(cfg, "v9")
    assert not (root / "outputs/checkpoints").exists()


def test_bad_loss_type_and_generation_batch_fail_validation(tmp_path):
    root = make_run_root(tmp_path / "r")
    with pytest.raises(ConfigError, match=r"train\.dpo\.loss_type"):
        tiny_config(root, train={"dpo": {"loss_type": "hinge2"}})
    with pytest.raises(ConfigError, match="num_generations=3 does not divide"):
        tiny_config(root, train={"grpo": {"versions": {"v1": {"num_generations": 3}}}})


def test_cli_missing_sft_is_one_line_error(tmp_path, monkeypatch):
    from sycorec.cli import main

    root = make_run_root(tmp_path / "r")
    monkeypatch.chdir(root)
    monkeypatch.setitem(sys.modules, "vllm", sys.modules.get("vllm"))  # the train group hides vLLM; undo after
    result = CliRunner().invoke(main, ["--profile", "tiny", "train", "preference", "dpo"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model 'sft' not found")
