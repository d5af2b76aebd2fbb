"""Supervised LoRA fine-tuning on the sycophantic responses: the induction stage and the relearning test.

Run: `sycorec --gpus 4 train sft` (stage train_sft), `sycorec --gpus 4 train relearn --start dpo` (relearn@dpo).
"""

from __future__ import annotations

from typing import Any

from sycorec.config import Config, LibrarySlice
from sycorec.paths import RELEARN_TRAIN, SFT_TRAIN
from sycorec.train.common import (
    load_tokenizer,
    prepared_dataset,
    training_start,
    write_train_summary,
)
from sycorec.train.runner import Result, Run, begin, lora_trainer_args, train, trainer_args


def sft_config(cfg: Config, run: str = "sft") -> Any:
    """The SFT stage's SFTConfig: train.common and train.sft as they are."""
    return _config(cfg, run, cfg.train.sft)


def relearn_config(cfg: Config, run: str) -> Any:
    """The relearning test's SFTConfig: SFT's objective on train.relearn's short schedule, without checkpoints."""
    return _config(
        cfg, run, cfg.train.relearn, completion_only_loss=cfg.train.sft.completion_only_loss, save_strategy="no"
    )


def _config(cfg: Config, run: str, schedule: LibrarySlice, **computed: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(**trainer_args(cfg.train, run, schedule, max_length=cfg.train.common.max_length, **computed))


def _sft(cfg: Config, run: Run, data: str, config: Any, hook: Any = None) -> Result:
    from trl import SFTTrainer

    tokenizer = load_tokenizer(run.start, padding_side="right")
    dataset = prepared_dataset(cfg, data, ("prompt", "completion"))
    session = begin(cfg, run, tokenizer, hook)
    result = train(session, SFTTrainer(**lora_trainer_args(session, config, dataset)))
    return result


def train_sft(cfg: Config, hook: Any = None) -> Result:
    """Induce sycophancy: LoRA SFT of the base model on prompt → sycophantic completion (loss on the completion)."""
    start = training_start(cfg, "base")
    sft = cfg.train.sft
    run = Run("sft", start, [cfg.paths.prepared / SFT_TRAIN], eval_every=sft.eval_every_steps)
    result = _sft(cfg, run, SFT_TRAIN, sft_config(cfg, run.name), hook)
    write_train_summary(cfg, run.name, result.trainer, {"final_loss": "loss"})  # P1: "147 steps"
    return result


def train_relearn(cfg: Config, start_name: str, hook: Any = None) -> Result:
    """How fast sycophancy returns: max_steps of the same SFT from `start_name`, frequent proxy, no checkpoints."""
    start = training_start(cfg, start_name)
    relearn = cfg.train.relearn
    run = Run(
        f"relearn_{start_name}",
        start,
        [cfg.paths.prepared / RELEARN_TRAIN],
        eval_every=relearn.eval_every_steps,
        merge=False,
    )
    return _sft(cfg, run, RELEARN_TRAIN, relearn_config(cfg, run.name), hook)
