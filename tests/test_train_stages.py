"""Every training stage runs a few steps on CPU through the same functions the CLI calls (tiny random Qwen3)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sycorec.errors import ConfigError, MissingInputError
from sycorec.io import read_json
from train_support import make_run_root, tiny_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    path = make_run_root(tmp_path_factory.mktemp("train") / "run")
    old = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(old)


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
    return all((path / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer_config.json"))


def test_sft_saves_merged_model_adapter_curve_and_dvclive(root, sft_done):
    out = root / "outputs/models/sft"
    assert _is_complete_model(out)
    assert (out / "adapter/adapter_config.json").is_file()
    assert sft_done.trainer.state.global_step == 2
    curve = read_json(root / "results/curves/sft.json")
    assert curve["step"] == [0, 2]  # step 0 and every eval_every_steps
    assert {"sycophancy_gap", "p_correct_plain", "p_correct_pressured", "confidence_drop"} <= set(curve)
    assert (root / "outputs/dvclive/sft/plots/metrics/proxy/sycophancy_gap.tsv").is_file()
    assert not (root / "outputs/checkpoints/sft").exists()  # a finished run keeps no checkpoints


@pytest.mark.parametrize("method", ["dpo", "simpo", "ipo"])
def test_preference_methods_train_from_sft(root, sft_done, method):
    from sycorec.train.preference import train_preference

    result = train_preference(tiny_config(root), method)
    assert result.trainer.state.global_step == 2
    assert _is_complete_model(root / "outputs/models" / method)
    assert read_json(root / f"results/curves/{method}.json")["step"] == [0, 2]
    losses = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    assert losses and all(loss == loss for loss in losses)  # no NaN


def test_rm_metrics_and_calibration(root, rm_done):
    metrics, _ = rm_done
    assert set(metrics) >= {"train_accuracy", "train_margin", "val_accuracy", "val_margin"}
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert read_json(root / "results/train/rm.json") == metrics
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(root / "outputs/models/rm")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
    stored = read_json(root / "outputs/calibration/calibration.json")
    assert stored["n"] == 4 * 2
    assert stored["min"] <= stored["threshold"] <= stored["max"]
    assert next(s for s in stored["splits"] if s["quantile"] == 0.5)["threshold"] == pytest.approx(stored["threshold"])


@pytest.mark.parametrize("version", ["v3", "v4"])  # continuous and binary reward
def test_grpo_versions(root, rm_done, version):
    from sycorec.train.grpo import train_grpo

    _, summary = train_grpo(tiny_config(root), version)
    assert summary["steps"] == 3
    for key in ("reward_mean", "reward_std", "kl", "completion_length", "frac_reward_zero_std", "runtime_s"):
        assert summary[key] is not None
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


def test_relearn_writes_curve_and_adapter(root, sft_done):
    from sycorec.train.sft import train_relearn

    result = train_relearn(tiny_config(root), "base")
    assert result.curve["step"] == [0, 2, 3]  # every 2 steps, and the final model
    out = root / "outputs/models/relearn_base"
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert not any((root / "outputs/checkpoints").glob("relearn_base/checkpoint-*"))


def test_keep_proxy_best_copies_the_best_adapter(root, sft_done):
    from sycorec.train.preference import train_preference

    cfg = tiny_config(root, train={"common": {"keep_proxy_best": True}})
    train_preference(cfg, "ipo")
    best = read_json(root / "outputs/models/ipo/proxy_best/proxy.json")
    curve = read_json(root / "results/curves/ipo.json")
    assert best["sycophancy_gap"] == min(curve["sycophancy_gap"])
    assert (root / "outputs/models/ipo/proxy_best/adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- resume


class Killed(RuntimeError):
    pass


def _killer():
    from transformers import TrainerCallback

    class KillAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Killed(f"killed after saving step {state.global_step}")

    return KillAfterFirstSave()


def test_killed_sft_resumes_and_matches_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from sycorec.train.sft import train_sft

    longer = {"train": {"sft": {"num_train_epochs": 2}}}  # 4 steps, a checkpoint every 2
    old = os.getcwd()
    try:
        reference = make_run_root(tmp_path / "ref")
        os.chdir(reference)
        train_sft(tiny_config(reference, **longer))
        resumed = make_run_root(tmp_path / "resumed")
        os.chdir(resumed)
        with pytest.raises(Killed, match="step 2"):
            train_sft(tiny_config(resumed, **longer), hook=_killer)
        assert (resumed / "outputs/checkpoints/sft/checkpoint-2").is_dir()
        assert not (resumed / "outputs/models/sft").exists()  # nothing half-written
        result = train_sft(tiny_config(resumed, **longer))
    finally:
        os.chdir(old)
    assert result.trainer.state.global_step == 4
    a = load_file(reference / "outputs/models/sft/adapter/adapter_model.safetensors")
    b = load_file(resumed / "outputs/models/sft/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # same data order, RNG and optimizer state: equal up to float32 round-off
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    ref_curve, resumed_curve = (read_json(r / "results/curves/sft.json") for r in (reference, resumed))
    assert ref_curve.keys() == resumed_curve.keys() and resumed_curve["step"] == [0, 2, 4]
    for key in ref_curve:
        assert resumed_curve[key] == pytest.approx(ref_curve[key], abs=1e-5)


def test_changed_params_discard_stale_checkpoints(tmp_path, monkeypatch):
    from sycorec.train.common import CHECKPOINTS, prepare_checkpoints

    monkeypatch.chdir(tmp_path)
    (CHECKPOINTS / "x/checkpoint-2").mkdir(parents=True)
    (CHECKPOINTS / "x/run.json").write_text(json.dumps({"fingerprint": "old"}))
    assert not prepare_checkpoints("x", "new")
    assert not (CHECKPOINTS / "x/checkpoint-2").exists()
    (CHECKPOINTS / "x/checkpoint-4").mkdir()
    assert prepare_checkpoints("x", "new")


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
    result = CliRunner().invoke(main, ["--profile", "tiny", "train", "dpo"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model 'sft' not found")
