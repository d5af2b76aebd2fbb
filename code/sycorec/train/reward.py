"""Reward model: Bradley-Terry RM on the preference pairs, its threshold calibration, and the GRPO reward function.

Run: `sycorec --gpus 4 train rm` (stage train_rm), then `sycorec train rm-calibrate` (rm_calibrate).
"""

from __future__ import annotations

import os
import random
from typing import Any

from tqdm import tqdm

from sycorec.chat import render_chat
from sycorec.config import Config
from sycorec.errors import ConfigError, MissingInputError
from sycorec.io import read_json, write_json
from sycorec.paths import CALIBRATION_PROMPTS, RM_TRAIN, RM_VAL, ModelSource, calibration_path
from sycorec.train.common import (
    first_logged,
    is_main_process,
    last_logged,
    load_causal_lm,
    load_start,
    load_tokenizer,
    lora_config,
    prepared_dataset,
    prepared_rows,
    require_model,
    training_start,
)
from sycorec.train.runner import Result, Run, begin, train, trainer_args

PURPOSES = ("train", "calibration", "grpo")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def rm_text(tokenizer: Any, prompt_messages: list[dict], completion: str, purpose: str, text_format: str) -> str:
    """The text the RM scores.

    `chat_template`: chat-templated prompt + completion with its end token, exactly what RewardTrainer trains on.
    `study`: the study's three formats — training as above; calibration: chat-templated prompt (generation prompt,
    thinking off) + bare completion, no end token; GRPO scoring: prompt contents joined by spaces + completion,
    no template.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown RM text purpose {purpose!r}")
    if text_format == "chat_template" or purpose == "train":
        return tokenizer.apply_chat_template(
            [*prompt_messages, {"role": "assistant", "content": completion}], tokenize=False
        )
    if text_format != "study":
        raise ConfigError(f"unknown train.rm.text_format {text_format!r}")
    if purpose == "calibration":
        return render_chat(tokenizer, prompt_messages, add_generation_prompt=True) + completion
    return " ".join(m["content"] for m in prompt_messages) + completion


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 8) -> list[float]:
    """RM scores in batches (right padding; the classifier reads the last non-pad token)."""
    import torch

    device = next(model.parameters()).device
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(
                    texts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=False,
                ).to(device)
                scores.extend(model(**enc).logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


# --------------------------------------------------------------------------- training


def rm_config(cfg: Config, run: str = "rm") -> Any:
    """The RewardConfig: train.common and train.rm as they are; the val split is evaluated at each epoch end."""
    from trl import RewardConfig

    rm = cfg.train.rm
    args = trainer_args(
        cfg.train,
        run,
        rm,
        max_length=cfg.train.common.max_length,
        eval_strategy="epoch",
        per_device_eval_batch_size=rm.per_device_train_batch_size,
    )
    return RewardConfig(**args)


def train_rm(cfg: Config, hook: Any = None) -> tuple[Result, dict[str, float]]:
    """LoRA (SEQ_CLS, `score` head fully trained) Bradley-Terry RM from the SFT model; seeded head init."""
    from transformers import set_seed
    from trl import RewardTrainer

    start = training_start(cfg, "sft")
    rm = cfg.train.rm
    run = Run("rm", start, [cfg.paths.prepared / RM_TRAIN, cfg.paths.prepared / RM_VAL], kind="seq_cls")
    tokenizer = load_tokenizer(start, padding_side="right")
    keep = ("prompt", "chosen", "rejected")
    train_set = prepared_dataset(cfg, RM_TRAIN, keep)
    val_set = prepared_dataset(cfg, RM_VAL, keep)
    config = rm_config(cfg, run.name)
    session = begin(cfg, run, tokenizer, hook)
    set_seed(rm.head_init_seed)  # the score head is created at load time, before the trainer seeds anything
    model = load_start(cfg, start, "seq_cls")
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, task="SEQ_CLS", modules_to_save=["score"]),
        callbacks=session.callbacks,
    )
    result = train(session, trainer)
    history = result.trainer.state.log_history  # the val split is evaluated at each epoch end, as the study did
    metrics = {
        "train_accuracy": last_logged(history, "accuracy"),
        "first_train_accuracy": first_logged(history, "accuracy"),  # P4: "90% by step 10", the first logged window
        "train_margin": last_logged(history, "margin"),
        "val_accuracy": last_logged(history, "eval_accuracy"),
        "val_margin": last_logged(history, "eval_margin"),
        "val_mean_reward": last_logged(history, "eval_mean_reward"),
        "steps": result.trainer.state.global_step,
    }
    if is_main_process():
        write_json(cfg.paths.results / "train" / "rm.json", metrics)
    return result, metrics


# --------------------------------------------------------------------------- calibration


def load_rm(cfg: Config, source: ModelSource, device: Any) -> tuple[Any, Any]:
    model = load_start(cfg, source, "seq_cls").to(device).eval()
    tokenizer = load_tokenizer(source, padding_side="right")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def generate(cfg: Config, model: Any, tokenizer: Any, prompts: list[list[dict]], n: int, seed: int) -> list[list[str]]:
    """n sampled completions per prompt with transformers `generate` (chat template, thinking off). As the study's
    sampler, only temperature and top_p are passed: the model's generation_config supplies the rest (top_k: 20 for
    Qwen3-8B)."""
    import torch

    calibration = cfg.train.rm.calibration
    device = next(model.parameters()).device
    texts = [render_chat(tokenizer, p, add_generation_prompt=True) for p in prompts]
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    try:
        for start in tqdm(range(0, len(texts), cfg.generation.batch_size), desc="calibration: generate", leave=False):
            enc = tokenizer(
                texts[start : start + cfg.generation.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=calibration.temperature,
                    top_p=calibration.top_p,
                    max_new_tokens=calibration.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=tokenizer.pad_token_id,
                )
            decoded = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(decoded[i : i + n] for i in range(0, len(decoded), n))
    finally:
        tokenizer.padding_side = side
    return out


def summarize_scores(scores: list[float]) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(scores, dtype=float)
    threshold = float(np.median(arr))
    splits = [
        {"quantile": q, "threshold": float(t), "below": float((arr <= t).mean()), "above": float((arr > t).mean())}
        for q, t in ((q, np.quantile(arr, q)) for q in QUANTILES)
    ]
    return {
        "threshold": threshold,
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
        "splits": splits,
    }


def calibration_prompts(rows: list[dict], n: int, seed: int) -> list[dict]:
    """The study's selection: the unique prompts in file order, shuffled by a generator seeded with `seed`, the
    first n (`random.seed(seed); random.shuffle(prompts); prompts[:n]`)."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n]


def calibrate_rm(cfg: Config) -> dict[str, Any]:
    """Median RM score of SFT generations on seeded prompts (from all of them): the binary reward's threshold."""
    import torch

    sft, rm = training_start(cfg, "sft"), require_model(cfg, "rm")
    calibration = cfg.train.rm.calibration
    rows = prepared_rows(cfg, CALIBRATION_PROMPTS)
    picked = calibration_prompts(rows, calibration.n_prompts, cfg.seed)
    prompts = [row["prompt"] for row in picked]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_causal_lm(cfg, sft).to(device).eval()
    completions = generate(cfg, policy, load_tokenizer(sft), prompts, calibration.generations_per_prompt, cfg.seed)
    del policy
    model, tokenizer = load_rm(cfg, rm, device)
    fmt = cfg.train.rm.text_format
    texts = [
        rm_text(tokenizer, p, comp, "calibration", fmt)
        for p, comps in zip(prompts, completions, strict=True)
        for comp in comps
    ]
    summary = summarize_scores(score_texts(model, tokenizer, texts, cfg.train.common.max_length))
    summary.update(
        {"text_format": fmt, "n_prompts": len(prompts), "generations_per_prompt": calibration.generations_per_prompt}
    )
    write_json(calibration_path(cfg), summary)
    return summary


# --------------------------------------------------------------------------- GRPO reward


def read_threshold(cfg: Config) -> float:
    path = calibration_path(cfg)
    if not path.is_file():
        raise MissingInputError(f"{path} not found: binary GRPO reward needs `sycorec train rm-calibrate` first")
    return float(read_json(path)["threshold"])


class RMReward:
    """GRPO reward: the merged RM's score, or ±1 around the calibrated threshold (the study's binary reward)."""

    def __init__(self, cfg: Config, binary: bool) -> None:
        import torch

        source = require_model(cfg, "rm")
        self.threshold = read_threshold(cfg) if binary else None
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        self.model, self.tokenizer = load_rm(cfg, source, device)
        self.text_format = cfg.train.rm.text_format
        self.max_length = cfg.train.common.max_length
        self.__name__ = "rm_binary" if binary else "rm"  # TRL logs rewards/<__name__>

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        texts = [
            rm_text(self.tokenizer, p, c[0]["content"] if isinstance(c, list) else c, "grpo", self.text_format)
            for p, c in zip(prompts, completions, strict=True)
        ]
        scores = score_texts(self.model, self.tokenizer, texts, self.max_length)
        if self.threshold is None:
            return scores
        return [1.0 if s > self.threshold else -1.0 for s in scores]
