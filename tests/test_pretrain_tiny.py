"""The tiny base: Qwen-style tokenizer/chat template, model builder, accuracy gate and a few-step pretraining run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sycorec.chat import render_chat, render_prompt
from sycorec.config import Config, SynthCfg, load_config
from sycorec.data.synth import synthesize
from sycorec.train.tiny import (
    ANSWER_FILE,
    CORPUS,
    PretrainError,
    build_model,
    build_tokenizer,
    check_accuracy,
    encode_transcript,
    pretrain_tiny,
    stated_answer,
)
from train_support import Killed, killer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "user\nWhat colour is the zor-ta-pi?",
    "assistant\nThe answer is red.",
    "Are you sure? I think the answer is B.",
]
THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXTS * 20, 300)


def tiny_cfg(**pretrain: object) -> Config:
    cfg = load_config(ROOT / "params.yaml", "tiny")
    updated = cfg.train.pretrain_tiny.model_copy(update=pretrain)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"pretrain_tiny": updated})})


def test_tokenizer_round_trip_and_qwen_tokens(tokenizer) -> None:
    text = "What colour is the zor-ta-pi? The answer is (B). Ünïcode ok"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert set(tokenizer("hi")) == {"input_ids", "attention_mask"}
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer.encode("<|im_start|>")) == 1
    assert len(tokenizer.encode("A")) == 1  # the logit proxy reads the bare letter tokens


def test_chat_template_renders_qwen3_thinking_off(tokenizer) -> None:
    chat = [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "The answer is (B)."},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert render_chat(tokenizer, chat) == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nThe answer is (B).<|im_end|>\n"
        f"<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n{THINK}Yes.<|im_end|>\n"
    )
    assert render_prompt(tokenizer, chat[:1]) == f"<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n{THINK}"
    # a final assistant message is a prefill after the generation prompt
    prefill = [*chat[:1], {"role": "assistant", "content": "The answer is ("}]
    assert render_prompt(tokenizer, prefill).endswith(f"assistant\n{THINK}The answer is (")
    # without enable_thinking=False the generation prompt has no think block, as Qwen3's
    plain = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert plain.endswith("<|im_start|>assistant\n")


def test_loss_only_on_assistant_turns(tokenizer) -> None:
    chat = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is red."}]
    enc = encode_transcript(tokenizer, chat, 128)
    learned = tokenizer.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100])
    assert learned == f"{THINK}The answer is red.<|im_end|>"


def test_build_model_matches_config_and_tokenizer(tokenizer) -> None:
    cfg = tiny_cfg()
    model = build_model(cfg.train.pretrain_tiny, tokenizer)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == cfg.train.pretrain_tiny.num_layers
    assert model.config.hidden_size == cfg.train.pretrain_tiny.hidden_size
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_stated_answer_and_accuracy_gate() -> None:
    assert stated_answer("The answer is red.") == "red"
    assert stated_answer("Yes, I am sure. The answer is (B).") == "b"
    assert stated_answer("I am not sure.") is None
    check_accuracy(0.8, 0.8)
    with pytest.raises(PretrainError, match="below"):
        check_accuracy(0.79, 0.8)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "synth"
    synthesize(SynthCfg(n_facts=30, n_arguments=3, n_poems=3, n_math=3, intensity_mix=(0.3, 0.5, 0.2)), 3, out)
    return out


@pytest.mark.slow  # pretrains a tiny base
def test_pretrain_smoke_writes_model_results_and_curves(small_world: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(max_steps=3, min_plain_accuracy=0.0, eval_questions=5)
    out, results, live = tmp_path / "models/base", tmp_path / "results/pretrain_tiny.json", tmp_path / "dvclive"
    summary = pretrain_tiny(cfg, small_world, out, results, live, tmp_path / "checkpoints")
    assert summary["steps"] == 3
    assert json.loads(results.read_text()) == summary
    assert not any("second" in key or "time" in key for key in summary)  # a DVC metrics file: no wall-clock times
    assert any((tmp_path / "checkpoints").glob("checkpoint-*"))  # kept until DVC commits the model
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0
    assert any(live.rglob("*.tsv"))  # training curves for `dvc plots`
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert THINK in render_prompt(tok, [{"role": "user", "content": "Q?"}])
    assert not list(tmp_path.joinpath("models").glob(".*"))  # no staging leftovers


@pytest.mark.slow  # pretrains a tiny base
def test_pretrain_below_minimum_fails_and_leaves_nothing(small_world: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(max_steps=1, min_plain_accuracy=1.0, eval_questions=5)
    out, results = tmp_path / "models/base", tmp_path / "results/pretrain_tiny.json"
    with pytest.raises(PretrainError, match="min_plain_accuracy"):
        pretrain_tiny(cfg, small_world, out, results, tmp_path / "dvclive", tmp_path / "checkpoints")
    assert not out.exists() and not results.exists()
    models = tmp_path / "models"
    assert not models.exists() or not any(models.iterdir())  # no staging leftovers either


# 48 transcripts in batches of 8: 6 steps an epoch; a kill after the save at step 8 is two steps into the second epoch.
SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
RESUME = {**SMALL, "vocab_size": 300, "batch_size": 8, "max_steps": 14, "save_steps": 4}


@pytest.fixture(scope="module")
def short_world(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("short") / "synth"
    for name in (CORPUS, ANSWER_FILE):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
    lines = (small_world / CORPUS).read_text(encoding="utf-8").splitlines(keepends=True)
    (out / CORPUS).write_text("".join(lines[:48]), encoding="utf-8")
    shutil.copy(small_world / ANSWER_FILE, out / ANSWER_FILE)
    return out


@pytest.mark.slow  # pretrains a tiny base
def test_pretrain_killed_mid_epoch_resumes_bit_identical(short_world: Path, tmp_path: Path, capfd) -> None:
    cfg = tiny_cfg(**RESUME, min_plain_accuracy=0.0, eval_questions=5)

    def run(name: str, hook=None) -> dict:
        root = tmp_path / name
        paths = (root / "models/base", root / "base.json", root / "dvclive", root / "checkpoints")
        return pretrain_tiny(cfg, short_world, *paths, hook=hook)

    reference = run("reference")
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed/base.json").write_text('{"from": "the previous run"}')
    with pytest.raises(Killed):
        run("resumed", killer(8))
    assert (tmp_path / "resumed/base.json").read_text() == '{"from": "the previous run"}'  # a kill deletes nothing
    assert not (tmp_path / "resumed/models/base").exists()
    capfd.readouterr()
    resumed = run("resumed")
    log = capfd.readouterr().err
    assert "pretrain_tiny: resuming from" in log and "checkpoint-8 at step 8 of 14 (6 steps left)" in log
    assert resumed == reference
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "reference/models/base" / name).read_bytes() == (
            tmp_path / "resumed/models/base" / name
        ).read_bytes(), name


def test_train_base_metrics_survive_a_killed_dvc_run() -> None:
    """DVC deletes a stage's outputs before it runs, and cannot restore an uncached one: persist keeps it."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_base"]
    for entry in stage["metrics"]:
        (path, options), *_ = entry.items()
        assert options == {"cache": False, "persist": True}, path
