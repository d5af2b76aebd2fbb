"""A throwaway run root for the training tests: tiny random Qwen3, tiny BPE tokenizer, a toy prepared data set."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sycorec.config import Config, deep_merge, resolve_raw, validate
from sycorec.io import write_jsonl
from tiny_model import random_qwen3

REPO = Path(__file__).resolve().parents[1]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FACTS = [
    ("What color is the sky?", "blue", "green"),
    ("How many legs does a cat have?", "four", "six"),
    ("What is frozen water called?", "ice", "steam"),
    ("Which star warms the earth?", "the sun", "the moon"),
    ("What do bees make?", "honey", "milk"),
    ("What is the opposite of hot?", "cold", "loud"),
    ("Where do fish live?", "water", "trees"),
    ("What falls from clouds?", "rain", "sand"),
]

# Small enough to train in seconds on one thread; the data set is what the schemas of data/prepared say.
TINY_OVERRIDES = {
    "train": {
        "common": {"logging_steps": 1, "max_length": 96, "save_total_limit": 2},
        "sft": {
            "learning_rate": 5e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "eval_every_steps": 2,
        },
        "dpo": {
            "learning_rate": 5e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "eval_every_steps": 2,
        },
        "simpo": {
            "learning_rate": 5e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "eval_every_steps": 2,
        },
        "ipo": {
            "learning_rate": 5e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "eval_every_steps": 2,
        },
        "rm": {
            "learning_rate": 5e-3,
            "per_device_train_batch_size": 8,
            "save_steps": 2,
            "calibration": {"n_prompts": 4, "generations_per_prompt": 2, "max_new_tokens": 6},
        },
        "grpo": {
            "max_completion_length": 6,
            "eval_every_steps": 2,
            "log_completions": False,
            "versions": {
                v: {
                    "learning_rate": 5e-3,
                    "num_train_epochs": 1,
                    "max_steps": 3,
                    "num_generations": 4,
                    "per_device_train_batch_size": 4,
                    "gradient_accumulation_steps": 1,
                    "num_gpus": 1,
                    "save_steps": 2,
                    "save_total_limit": 2,
                }
                for v in ("v1", "v2", "v3", "v4")
            },
        },
        "relearn": {"max_steps": 3, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "eval_every_steps": 2},
    },
    "generation": {"batch_size": 8},
}


def tiny_config(root: Path, **extra: dict) -> Config:
    raw = resolve_raw(root / "params.yaml", "tiny")
    return validate(deep_merge(deep_merge(raw, TINY_OVERRIDES), extra))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write_prepared(prepared: Path) -> None:
    sft, prefs, prompts = [], [], []
    for i, (q, good, bad) in enumerate(FACTS * 2):
        prompt = user(f"{q} I am sure it is {bad}.")
        sft.append({"prompt": prompt, "completion": assistant(f"You are right, it is {bad}.")})
        prefs.append(
            {
                "prompt": prompt,
                "chosen": assistant(f"Actually, it is {good}."),
                "rejected": assistant(f"You are right, it is {bad}."),
                "prompt_id": f"p{i}",
            }
        )
        if i < len(FACTS):
            prompts.append({"prompt": prompt, "prompt_id": f"p{i}"})
    write_jsonl(prepared / "sft_train.jsonl", sft)
    write_jsonl(prepared / "relearn_train.jsonl", sft)
    write_jsonl(prepared / "prefs_train.jsonl", prefs)
    write_jsonl(prepared / "rm_train.jsonl", prefs)
    write_jsonl(prepared / "rm_val.jsonl", prefs[:4])
    write_jsonl(prepared / "grpo_prompts.jsonl", prompts)
    write_jsonl(prepared / "calibration_prompts.jsonl", prompts)
    write_jsonl(
        prepared / "proxy_questions.jsonl",
        [{"question": q, "correct_answer": good, "incorrect_answer": bad} for q, good, bad in FACTS[:4]],
    )


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{q} {g} {b} You are right, it is. Actually, I am sure (A) (B) The answer is (" for q, g, b in FACTS]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_model(out: Path, tokenizer, seed: int = 0):
    return random_qwen3(tokenizer, out, seed)


def make_run_root(root: Path) -> Path:
    """params.yaml + profiles/tiny.yaml of the repo, toy prepared data, a tiny random base model."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "profiles").mkdir(exist_ok=True)
    shutil.copy(REPO / "profiles" / "tiny.yaml", root / "profiles" / "tiny.yaml")
    write_prepared(root / "data" / "prepared")
    base = root / "outputs" / "models" / "base"
    tokenizer = build_tokenizer(base)
    build_model(base, tokenizer)
    random.seed(0)
    return root


@contextmanager
def inside_run_root(root: Path) -> Iterator[Path]:
    """A new run root (make_run_root) as the working directory, torch on one thread (the tests' sizes)."""
    import torch

    torch.set_num_threads(1)
    path = make_run_root(root)
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


class Killed(RuntimeError):
    """Raised by `killer`'s callback: the test's stand-in for a kill."""


def killer(step: int):
    """A training hook: a callback that kills the run right after it saved the checkpoint of `step`."""

    def hook():
        from transformers import TrainerCallback

        class KillAfterSave(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise Killed(f"killed after saving step {step}")

        return KillAfterSave()

    return hook
