"""Online recovery: GRPO from the SFT model with LoRA, rewarded by the merged RM (continuous or binary).

Run: `sycorec --gpus 2 train grpo --version v3` (stage train_grpo@v3; the GPUs are the version's num_gpus).

Rollouts: TRL 0.29.1 samples with `model.generate` on the policy in train mode. With gradient checkpointing on (as
the study ran), transformers 4.57 drops the KV cache in a checkpointed layer in train mode while `generate` still
feeds only the newest token; TRL's `unwrap_model_for_generation` switches checkpointing off around sampling, so the
rollouts are sound (tests/test_grpo_rollout.py pins both facts). Each rollout's degeneracy is logged
(`rollout/distinct_token_share`, `rollout/repeated_ngram_share`) and summarised in results/train/grpo_<v>.json, so a
library change that breaks sampling shows up in the run's own metrics.
"""

from __future__ import annotations

from typing import Any

from sycorec.config import Config
from sycorec.errors import ConfigError
from sycorec.io import write_json
from sycorec.paths import GRPO_PROMPTS, calibration_path
from sycorec.train.common import (
    first_logged,
    is_main_process,
    last_logged,
    load_tokenizer,
    prepared_dataset,
    require_model,
    training_start,
)
from sycorec.train.reward import RMReward
from sycorec.train.runner import Result, Run, begin, lora_trainer_args, train, trainer_args

# Run-summary keys → the GRPOTrainer log keys they are read from (last logged value).
SUMMARY_KEYS = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completion_length": "completions/mean_length",
    "frac_reward_zero_std": "frac_reward_zero_std",
}


ROLLOUT_NGRAM = 3  # repeated n-grams are counted at this n


def degeneracy(completions: list[list[int]], n: int = ROLLOUT_NGRAM) -> dict[str, float]:
    """How repetitive sampled completions are (special tokens removed beforehand): the mean share of distinct tokens
    per completion and the mean share of a completion's n-grams that repeat an earlier n-gram of it."""
    nonempty = [ids for ids in completions if ids]
    long = [ids for ids in nonempty if len(ids) >= n]
    distinct = [len(set(ids)) / len(ids) for ids in nonempty]
    repeated = [
        1 - len(set(grams)) / len(grams)
        for grams in ([tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)] for ids in long)
    ]
    return {
        "distinct_token_share": sum(distinct) / len(distinct) if distinct else float("nan"),
        "repeated_ngram_share": sum(repeated) / len(repeated) if repeated else float("nan"),
    }


def measured_trainer_class() -> type:
    """TRL's GRPOTrainer, recording every rollout's degeneracy."""
    from trl import GRPOTrainer

    class MeasuredGRPOTrainer(GRPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.rollout_history: list[dict[str, float]] = []

        def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any) -> Any:
            completion_ids, logprobs, extra = super()._generate_single_turn(prompt_ids, images, multimodal_fields)
            special = {self.eos_token_id, self.pad_token_id}
            stats = degeneracy([[t for t in ids if t not in special] for ids in completion_ids])
            mode = "train" if self.model.training else "eval"
            for key, value in stats.items():
                self._metrics[mode][f"rollout/{key}"].append(value)
            if mode == "train":
                self.rollout_history.append(stats)
            return completion_ids, logprobs, extra

    return MeasuredGRPOTrainer


def rollout_summary(history: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean, first and last rollout value of each degeneracy measure."""
    out: dict[str, float | None] = {}
    for key in ("distinct_token_share", "repeated_ngram_share"):
        values = [h[key] for h in history if h[key] == h[key]]  # NaN: no completion long enough
        out[f"rollout_{key}"] = sum(values) / len(values) if values else None
        out[f"rollout_{key}_first"] = values[0] if values else None
        out[f"rollout_{key}_last"] = values[-1] if values else None
    return out


def version_cfg(cfg: Config, version: str) -> Any:
    if version not in cfg.train.grpo.versions:
        raise ConfigError(
            f"unknown GRPO version {version!r} (train.grpo.versions has {', '.join(cfg.train.grpo.versions)})"
        )
    return cfg.train.grpo.versions[version]


def grpo_config(cfg: Config, version: str) -> Any:
    """The version's GRPOConfig: train.common, train.grpo and train.grpo.versions.<version> as they are."""
    from trl import GRPOConfig

    return GRPOConfig(**trainer_args(cfg.train, f"grpo_{version}", cfg.train.grpo, version_cfg(cfg, version)))


def train_grpo(cfg: Config, version: str, hook: Any = None) -> tuple[Result, dict[str, Any]]:
    grpo = cfg.train.grpo
    grpo_version = version_cfg(cfg, version)
    start = training_start(cfg, "sft")
    rm = require_model(cfg, "rm")
    inputs = [cfg.paths.prepared / GRPO_PROMPTS]
    if grpo_version.reward == "binary":
        inputs.append(calibration_path(cfg))
    # fails here, before training, without an RM or threshold
    reward = RMReward(cfg, binary=grpo_version.reward == "binary")
    run = Run(f"grpo_{version}", start, inputs, eval_every=grpo.eval_every_steps, keep_best=True, extra={"rm": rm.path})
    config = grpo_config(cfg, version)
    tokenizer = load_tokenizer(start, padding_side="left")
    dataset = prepared_dataset(cfg, GRPO_PROMPTS, ("prompt",))
    session = begin(cfg, run, tokenizer, hook)
    trainer = measured_trainer_class()(**lora_trainer_args(session, config, dataset), reward_funcs=[reward])
    result = train(session, trainer)
    history = result.trainer.state.log_history
    summary: dict[str, Any] = {key: last_logged(history, log_key) for key, log_key in SUMMARY_KEYS.items()}
    # P4's GRPO v1 reward (+1.82, std 0.60) is the first logged value
    summary |= {f"first_{key}": first_logged(history, SUMMARY_KEYS[key]) for key in ("reward_mean", "reward_std")}
    summary.update(
        {
            "steps": result.trainer.state.global_step,
            "reward": grpo_version.reward,
            "threshold": reward.threshold,
            "gradient_checkpointing": cfg.train.common.gradient_checkpointing,
            **rollout_summary(result.trainer.rollout_history),
        }
    )
    if result.curve:
        summary["final_proxy_gap"] = result.curve["sycophancy_gap"][-1]
    if is_main_process():
        write_json(cfg.paths.results / "train" / f"{run.name}.json", summary)
    return result, summary
