"""Online recovery: GRPO from the SFT model with LoRA, rewarded by the merged RM (continuous or binary)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sycorec.config import Config
from sycorec.errors import ConfigError
from sycorec.io import write_json
from sycorec.paths import calibration_path
from sycorec.train.common import (
    first_logged,
    is_main_process,
    last_logged,
    load_causal_lm,
    load_rows,
    load_tokenizer,
    lora_config,
    require_hardware,
    require_model,
    to_dataset,
    trainer_kwargs,
)
from sycorec.train.reward import GRPO_PROMPTS, RMReward
from sycorec.train.runner import Result, Run, finish, run_trainer

# Run-summary keys → the GRPOTrainer log keys they are read from (last logged value).
SUMMARY_KEYS = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completion_length": "completions/mean_length",
    "frac_reward_zero_std": "frac_reward_zero_std",
}


def version_cfg(cfg: Config, version: str) -> Any:
    if version not in cfg.train.grpo.versions:
        raise ConfigError(
            f"unknown GRPO version {version!r} (train.grpo.versions has {', '.join(cfg.train.grpo.versions)})"
        )
    return cfg.train.grpo.versions[version]


def train_grpo(cfg: Config, version: str, hook: Any = None) -> tuple[Result, dict[str, Any]]:
    from trl import GRPOConfig, GRPOTrainer

    g = cfg.train.grpo
    v = version_cfg(cfg, version)
    require_hardware(cfg)
    start = require_model(cfg, "sft")
    rm = require_model(cfg, "rm")
    inputs = [cfg.paths.prepared / GRPO_PROMPTS]
    if v.reward == "binary":
        inputs.append(calibration_path(cfg))
    reward = RMReward(cfg, binary=v.reward == "binary")  # fails here, before training, without an RM or threshold
    run = Run(f"grpo_{version}", start, inputs, eval_every=g.eval_every_steps, keep_best=True, extra={"rm": rm.path})
    schedule = SimpleNamespace(**v.model_dump(), lr_scheduler_type=g.lr_scheduler_type, warmup_ratio=g.warmup_ratio)
    config = GRPOConfig(
        **trainer_kwargs(cfg, run.name, schedule),
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        beta=g.beta,
        epsilon=g.epsilon,
        temperature=g.temperature,
        max_completion_length=g.max_completion_length,
        num_generations=v.num_generations,
        use_vllm=g.use_vllm,
        log_completions=g.log_completions,
    )
    tokenizer = load_tokenizer(start, padding_side="left")
    dataset = to_dataset(load_rows(cfg, GRPO_PROMPTS), ("prompt",))

    def build(callbacks: list[Any]) -> Any:
        return GRPOTrainer(
            model=load_causal_lm(cfg, start),
            reward_funcs=[reward],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            callbacks=callbacks,
        )

    result = run_trainer(cfg, run, tokenizer, build, hook)
    history = result.trainer.state.log_history
    summary: dict[str, Any] = {key: last_logged(history, log_key) for key, log_key in SUMMARY_KEYS.items()}
    # P4's GRPO v1 reward (+1.82, std 0.60) is the first logged value
    summary |= {f"first_{key}": first_logged(history, SUMMARY_KEYS[key]) for key in ("reward_mean", "reward_std")}
    summary.update(
        {
            "steps": result.trainer.state.global_step,
            "reward": v.reward,
            "threshold": reward.threshold,
        }
    )
    if result.curve:
        summary["final_proxy_gap"] = result.curve["sycophancy_gap"][-1]
    if is_main_process():
        write_json(cfg.paths.results / "train" / f"{run.name}.json", summary)
    finish(run)
    return result, summary
