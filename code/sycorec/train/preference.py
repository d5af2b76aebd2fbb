"""Offline preference recovery from the SFT model: DPO (sigmoid), IPO (DPOTrainer loss ipo), SimPO (CPOTrainer).

Run: `sycorec --gpus 4 train preference dpo` (stage train_pref@dpo). The method is a params slice
(`train.dpo|simpo|ipo`); a sweep is a params override, e.g.
`dvc exp run -S train.simpo.learning_rate=1e-5 -S train.simpo.num_train_epochs=3` (SimPO v3) or
`dvc exp run -S train.ipo.beta=0.5 -S train.ipo.learning_rate=5e-6` (IPO v3).
"""

from __future__ import annotations

import os
from typing import Any

from sycorec.config import Config, DPOCfg, SimPOCfg
from sycorec.errors import ConfigError
from sycorec.train.common import (
    load_tokenizer,
    prepared_dataset,
    training_start,
    write_train_summary,
)
from sycorec.train.runner import Result, Run, begin, lora_trainer_args, train

PREFS_DATA = "prefs_train.jsonl"
METHODS = ("dpo", "simpo", "ipo")
# results/train/<method>.json → the trainer log keys (last logged window): P1's DPO "loss 0.007, margins 7.13, 100%"
SUMMARY_KEYS = {"final_loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}


def method_cfg(cfg: Config, method: str) -> DPOCfg | SimPOCfg:
    if method not in METHODS:
        raise ConfigError(f"unknown preference method {method!r} (one of {', '.join(METHODS)})")
    return getattr(cfg.train, method)


def preference_config(cfg: Config, method: str) -> Any:
    """The method's DPOConfig, or CPOConfig for SimPO: train.common and train.<method> as they are."""
    preference = method_cfg(cfg, method)
    max_length = cfg.train.common.max_length
    if preference.loss_type == "simpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo import CPOConfig

        # CPO's collator needs the raw columns
        return CPOConfig(
            **cfg.train.trainer_args(method, preference, max_length=max_length, remove_unused_columns=False)
        )
    from trl import DPOConfig

    return DPOConfig(**cfg.train.trainer_args(method, preference, max_length=max_length))


def train_preference(cfg: Config, method: str, hook: Any = None) -> Result:
    """Train `method` from the SFT-merged model with LoRA; DPO/IPO use the adapter-disabled model as reference."""
    preference = method_cfg(cfg, method)
    start = training_start(cfg, "sft")
    run = Run(method, start, [cfg.paths.prepared / PREFS_DATA], eval_every=preference.eval_every_steps, keep_best=True)
    config = preference_config(cfg, method)
    tokenizer = load_tokenizer(start, padding_side="right")
    dataset = prepared_dataset(cfg, PREFS_DATA, ("prompt", "chosen", "rejected"))
    session = begin(cfg, run, tokenizer, hook)
    if preference.loss_type == "simpo":
        from trl.experimental.cpo import CPOTrainer

        trainer = CPOTrainer(**lora_trainer_args(session, config, dataset))
    else:
        from trl import DPOTrainer

        trainer = DPOTrainer(**lora_trainer_args(session, config, dataset), ref_model=None)
    result = train(session, trainer)
    write_train_summary(cfg, run.name, result.trainer, SUMMARY_KEYS)
    return result
