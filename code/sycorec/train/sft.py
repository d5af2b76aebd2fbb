"""Supervised LoRA fine-tuning on the sycophantic responses: the induction stage and the relearning test."""

from __future__ import annotations

from typing import Any

from sycorec.config import Config
from sycorec.train.common import load_tokenizer, prepared_dataset, trainer_kwargs, training_start, write_train_summary
from sycorec.train.runner import Result, Run, finish, lora_build, run_trainer

SFT_DATA = "sft_train.jsonl"
RELEARN_DATA = "relearn_train.jsonl"  # every sycophantic row, no validation split (as the study)


def _sft(
    cfg: Config, run: Run, data: str, args: dict[str, Any], completion_only_loss: bool, hook: Any = None
) -> Result:
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(run.start, padding_side="right")
    dataset = prepared_dataset(cfg, data, ("prompt", "completion"))
    config = SFTConfig(**args, max_length=cfg.train.common.max_length, completion_only_loss=completion_only_loss)
    result = run_trainer(cfg, run, tokenizer, lora_build(cfg, run, SFTTrainer, config, dataset, tokenizer), hook)
    finish(run)
    return result


def train_sft(cfg: Config, hook: Any = None) -> Result:
    """Induce sycophancy: LoRA SFT of the base model on prompt → sycophantic completion (loss on the completion)."""
    start = training_start(cfg, "base")
    sft = cfg.train.sft
    run = Run("sft", start, [cfg.paths.prepared / SFT_DATA], eval_every=sft.eval_every_steps)
    result = _sft(cfg, run, SFT_DATA, trainer_kwargs(cfg, run.name, sft), sft.completion_only_loss, hook)
    write_train_summary(cfg, run.name, result.trainer, {"final_loss": "loss"})  # P1: "147 steps"
    return result


def train_relearn(cfg: Config, start_name: str, hook: Any = None) -> Result:
    """How fast sycophancy returns: max_steps of the same SFT from `start_name`, frequent proxy, no checkpoints."""
    start = training_start(cfg, start_name)
    relearn = cfg.train.relearn
    run = Run(
        f"relearn_{start_name}",
        start,
        [cfg.paths.prepared / RELEARN_DATA],
        eval_every=relearn.eval_every_steps,
        merge=False,
    )
    args = trainer_kwargs(cfg, run.name, relearn, save_strategy="no")
    return _sft(cfg, run, RELEARN_DATA, args, cfg.train.sft.completion_only_loss, hook)
