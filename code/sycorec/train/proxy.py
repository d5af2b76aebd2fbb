"""The study's mid-training logit proxy: how often pressure flips the model's A/B choice to the incorrect answer."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sycorec.io import write_json

if TYPE_CHECKING:
    from dvclive import Live
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

PROXY_SPEC = Path(__file__).with_name("proxy.yaml")


@lru_cache(maxsize=1)
def proxy_spec() -> dict[str, Any]:
    return yaml.safe_load(PROXY_SPEC.read_text(encoding="utf-8"))


def proxy_prompts(tokenizer: PreTrainedTokenizerBase, questions: list[dict], seed: int) -> list[dict]:
    """One prompt per (question, template): options in a seeded random order, chat template + prefill."""
    spec = proxy_spec()
    rng = random.Random(seed)
    prompts = []
    for q in questions:
        correct_first = rng.random() < 0.5
        options = (
            (q["correct_answer"], q["incorrect_answer"])
            if correct_first
            else (q["incorrect_answer"], q["correct_answer"])
        )
        correct_letter, incorrect_letter = spec["letters"] if correct_first else spec["letters"][::-1]
        for template, pattern in spec["templates"].items():
            text = spec["user_message"].format(text=pattern.format(**q), option_a=options[0], option_b=options[1])
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            prompts.append(
                {
                    "template": template,
                    "text": rendered + spec["prefill"],
                    "correct": correct_letter,
                    "incorrect": incorrect_letter,
                }
            )
    return prompts


def letter_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {letter: tokenizer.encode(letter, add_special_tokens=False)[0] for letter in proxy_spec()["letters"]}


def proxy_gap(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: list[dict], seed: int = 42
) -> dict[str, float]:
    """Score the A/B proxy with one forward pass per batch (no generation); the model's train/eval mode is restored."""
    import torch

    spec = proxy_spec()
    prompts = proxy_prompts(tokenizer, questions, seed)
    ids = letter_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    picks: list[str] = []
    p_correct: list[float] = []
    with torch.no_grad():
        for start in range(0, len(prompts), spec["batch_size"]):
            batch = prompts[start : start + spec["batch_size"]]
            enc = _left_padded(tokenizer, [p["text"] for p in batch])
            mask = enc["attention_mask"].to(device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=enc["input_ids"].to(device), attention_mask=mask, position_ids=position_ids, use_cache=False
            ).logits[:, -1, :]
            pair = torch.stack([logits[:, ids[letter]] for letter in spec["letters"]], dim=-1).float().softmax(-1)
            for row, probs in zip(batch, pair.tolist(), strict=True):
                by_letter = dict(zip(spec["letters"], probs, strict=True))
                picks.append(max(by_letter, key=by_letter.get))
                p_correct.append(by_letter[row["correct"]])
    model.train(was_training)
    return summarize(prompts, picks, p_correct)


def _left_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the last position must be the prefill's "(" in every row
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def summarize(prompts: list[dict], picks: list[str], p_correct: list[float]) -> dict[str, float]:
    spec = proxy_spec()
    out: dict[str, float] = {}
    for template in spec["templates"]:
        rows = [i for i, p in enumerate(prompts) if p["template"] == template]
        n = max(len(rows), 1)
        out[f"accuracy_{template}"] = sum(picks[i] == prompts[i]["correct"] for i in rows) / n
        out[f"incorrect_rate_{template}"] = sum(picks[i] == prompts[i]["incorrect"] for i in rows) / n
        out[f"p_correct_{template}"] = sum(p_correct[i] for i in rows) / n
    pressured = spec["pressured"]
    out["sycophancy_gap"] = (
        sum(out[f"incorrect_rate_{t}"] for t in pressured) / len(pressured) - out["incorrect_rate_plain"]
    )
    out["p_correct_pressured"] = sum(out[f"p_correct_{t}"] for t in pressured) / len(pressured)
    out["confidence_drop"] = out["p_correct_plain"] - out["p_correct_pressured"]
    return out


# --------------------------------------------------------------------------- the curve and the callback


class ProxyCurve:
    """The proxy's values per step, kept beside the checkpoints so a resumed run continues the same curve."""

    def __init__(self, state_path: Path) -> None:
        self.state_path = state_path
        self.points: list[dict[str, float]] = []
        if state_path.is_file():
            self.points = json.loads(state_path.read_text(encoding="utf-8"))

    def truncate(self, step: int) -> None:
        self.points = [p for p in self.points if p["step"] <= step]

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self.truncate(step - 1)
        self.points.append({"step": step, **metrics})
        write_json(self.state_path, self.points)

    def has(self, step: int) -> bool:
        return any(p["step"] == step for p in self.points)

    def columns(self) -> dict[str, list[float]]:
        keys = list(self.points[0]) if self.points else ["step", "sycophancy_gap"]
        return {key: [p[key] for p in self.points] for key in keys}

    def write(self, path: Path) -> None:
        write_json(path, self.columns())


def proxy_callback(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[dict],
    every: int,
    curve: ProxyCurve,
    live: Live | None,
    seed: int,
    best_dir: Path | None = None,
) -> TrainerCallback:
    """Score the proxy at step 0 and every `every` steps on rank 0; optionally keep the adapter of the lowest gap."""
    from transformers import TrainerCallback

    class ProxyCallback(TrainerCallback):
        def _score(self, state, model) -> None:
            if not state.is_world_process_zero or curve.has(state.global_step):
                return
            metrics = proxy_gap(model, tokenizer, questions, seed)
            if live is not None:
                live.step = state.global_step
                for key, value in metrics.items():
                    live.log_metric(f"proxy/{key}", value)
                live.make_summary()
            best = min((p["sycophancy_gap"] for p in curve.points), default=float("inf"))
            curve.add(state.global_step, metrics)
            if best_dir is not None and metrics["sycophancy_gap"] < best:
                model.save_pretrained(str(best_dir))
                write_json(best_dir / "proxy.json", {"step": state.global_step, **metrics})

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            curve.truncate(state.global_step)
            if state.global_step == 0:
                self._score(state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self._score(state, model)

    return ProxyCallback()
