"""GRPO rollouts on a policy in train mode with gradient checkpointing on, as the study trained.

Pins two facts of the pinned TRL 0.29.1 + transformers 4.57.6: a plain `generate` on such a policy is wrong (a
checkpointed layer in train mode drops the KV cache while `generate` feeds only the newest token), and TRL's own GRPO
sampling path is right (its `unwrap_model_for_generation` switches checkpointing off around sampling), so the study's
GRPO rollouts were sound. If an upgrade drops TRL's guard, the first assertion fails.
"""

from __future__ import annotations

import sys

import pytest

from tiny_model import random_qwen3
from train_support import build_tokenizer

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def hide_vllm(monkeypatch):
    """As the training CLI does (TRL's import-time vLLM patch is not needed here); later tests see vLLM again."""
    if "vllm" not in sys.modules:
        monkeypatch.setitem(sys.modules, "vllm", None)


PROMPTS = ["What color is the sky?", "How many legs does a cat have?"]
NEW_TOKENS = 12
SEED = 4
WEIGHT_SCALE = 20.0  # the random init (std 0.02) decodes one token forever; scaled, greedy text varies


def _greedy(model, tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id
    )


def _trainer(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig

    from sycorec.train.grpo import measured_trainer_class

    tokenizer = build_tokenizer(tmp_path / "tok")
    tokenizer.padding_side = "left"
    model = random_qwen3(tokenizer, seed=SEED)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(WEIGHT_SCALE)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=NEW_TOKENS,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=True,
        report_to="none",
    )
    trainer = measured_trainer_class()(
        model=model,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    # what Trainer.train() does before the first rollout: checkpointing on, policy in train mode
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer.model.train()
    # greedy, so that the rollout can be compared token for token (TRL also overrides the model's generation_config)
    trainer.generation_config = _greedy(model, tokenizer)
    trainer.generation_kwargs = {"do_sample": False, "top_k": None, "top_p": None, "temperature": None}
    return trainer, tokenizer


def _rollout(trainer, tokenizer) -> list[list[int]]:
    """TRL's own GRPO sampling step (`use_vllm: false`, as the study ran)."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    completion_ids, _, _ = trainer._generate_single_turn(prompt_ids, None, {})
    return [list(ids) for ids in completion_ids]


def _greedy_ids(trainer, tokenizer, train_mode: bool) -> list[list[int]]:
    """Plain `generate` on the policy in eval mode, or in train mode with checkpointing on."""
    model = trainer.model
    model.train(train_mode)
    with torch.no_grad():
        out = []
        for p in PROMPTS:
            ids = tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
            gen = model.generate(input_ids=ids, generation_config=_greedy(model, tokenizer))
            out.append(gen[0, ids.shape[1] :].tolist())
    model.train()
    return out


@pytest.mark.slow  # ~40 s on 2 busy cores, most of it building TRL's trainer
def test_trl_rollouts_equal_eval_greedy_while_plain_train_mode_generate_degenerates(tmp_path):
    from sycorec.train.grpo import degeneracy

    trainer, tokenizer = _trainer(tmp_path)
    reference = _greedy_ids(trainer, tokenizer, train_mode=False)
    assert trainer.model.training and trainer.model.is_gradient_checkpointing
    assert _rollout(trainer, tokenizer) == reference  # TRL's sampling path: checkpointing off while sampling
    assert trainer.model.is_gradient_checkpointing  # and on again afterwards
    assert len(trainer.rollout_history) == 1
    broken = _greedy_ids(trainer, tokenizer, train_mode=True)
    assert broken != reference
    # only the first token sees the prompt; the rest falls into short cycles
    assert [ids[0] for ids in broken] == [ids[0] for ids in reference]
    assert degeneracy(broken)["repeated_ngram_share"] > degeneracy(reference)["repeated_ngram_share"]


def test_degeneracy_measures():
    from sycorec.train.grpo import degeneracy, rollout_summary

    stats = degeneracy([[1, 2, 3, 1, 2, 3, 1, 2, 3], [4, 5, 6, 7]])
    assert stats["distinct_token_share"] == pytest.approx((3 / 9 + 1) / 2)
    # 7 trigrams of which 3 distinct; 2 distinct of 2
    assert stats["repeated_ngram_share"] == pytest.approx((1 - 3 / 7 + 0) / 2)
    assert degeneracy([[]])["distinct_token_share"] != degeneracy([[]])["distinct_token_share"]  # NaN: nothing
    summary = rollout_summary([stats, degeneracy([[1, 1, 1, 1]])])
    assert summary["rollout_distinct_token_share_first"] == stats["distinct_token_share"]
    assert summary["rollout_repeated_ngram_share_last"] == pytest.approx(1 - 1 / 2)
