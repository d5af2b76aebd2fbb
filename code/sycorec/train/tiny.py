"""The tiny model organism's base: a byte-level BPE tokenizer and a small Qwen3 trained from scratch on the world.

Only the tiny profile uses this stage (the full study starts from Qwen/Qwen3-8B). The tokenizer carries Qwen3's chat
template, so every later stage renders prompts exactly as it would for the real model, empty think block included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sycorec.chat import render_chat, render_prompt
from sycorec.clikit import Config
from sycorec.config import PretrainTinyCfg
from sycorec.errors import ConfigError, MissingInputError, SycorecError
from sycorec.facts import world
from sycorec.io import iter_jsonl, read_json, seal_weights, staged_dir, write_json
from sycorec.train.common import (
    CHECKPOINTS,
    TRAINER_STATE,
    fingerprint,
    keep_epoch_when_skipping,
    last_logged,
    live_callback,
    log_at_save,
    prepare_checkpoints,
)

PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"
# Qwen3 keeps <think>/</think> as added (non-special) tokens, so they survive decoding with skip_special_tokens.
THINK_TOKENS = ("<think>", "</think>")
CORPUS = "pretrain/corpus.jsonl"
ANSWER_FILE = "sycophancy_eval/answer.jsonl"
STAGE = "pretrain_tiny"


class PretrainError(SycorecError):
    """The tiny base did not learn the world well enough to build on."""


@cache
def chat_template() -> str:
    return resources.files("sycorec.train").joinpath("qwen3_chat_template.jinja").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a Qwen-style `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, EOS],
        model_input_names=["input_ids", "attention_mask"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(THINK_TOKENS))
    tokenizer.chat_template = chat_template()
    return tokenizer


_ASSISTANT_SPAN = re.compile(re.escape(f"{IM_START}assistant\n") + r".*?" + re.escape(EOS), re.DOTALL)


def encode_transcript(tokenizer: Any, messages: Sequence[dict], max_length: int) -> dict[str, list[int]]:
    """Token ids of a rendered transcript, with loss only on assistant turns (their text and closing <|im_end|>)."""
    text = render_chat(tokenizer, messages)
    spans = [(m.start() + len(f"{IM_START}assistant\n"), m.end()) for m in _ASSISTANT_SPAN.finditer(text)]
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, truncation=True, max_length=max_length)
    labels = [
        tok if any(lo <= start < hi for lo, hi in spans) else -100
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return {"input_ids": enc["input_ids"], "labels": labels}


# --------------------------------------------------------------------------- model


def build_model(cfg_pretrain: PretrainTinyCfg, tokenizer: Any) -> Any:
    """A randomly initialised `Qwen3ForCausalLM` sized by `train.pretrain_tiny`, matched to `tokenizer`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    c = cfg_pretrain
    if c.hidden_size % c.num_heads or c.num_heads % c.num_kv_heads:
        raise ConfigError(
            "train.pretrain_tiny: hidden_size must be a multiple of num_heads, and num_heads of num_kv_heads"
        )
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.hidden_size // c.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --------------------------------------------------------------------------- accuracy


def stated_answer(response: str) -> str | None:
    """The answer after the world's marker phrase ("The answer is red." -> "red"), or None."""
    marker = world().answer.stated_answer_marker
    if marker not in response:
        return None
    tail = response.split(marker, 1)[1]
    return tail.split(".", 1)[0].strip().strip("()").strip().lower() or None


def generate_responses(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 16, batch_size: int = 64
) -> list[str]:
    """Greedy responses (new text only) for chat conversations, left-padded batches."""
    import torch

    prompts = [render_prompt(tokenizer, conv) for conv in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                batch = tokenizer(
                    prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                )
                gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
                new = gen[:, batch["input_ids"].shape[1] :]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out


def answer_accuracy(model: Any, tokenizer: Any, items: Sequence[dict]) -> float:
    """Share of `{"question", "answers"}` items whose greedy plain answer is one of `answers`."""
    if not items:
        raise PretrainError("no questions to measure accuracy on")
    responses = generate_responses(model, tokenizer, [[{"role": "user", "content": it["question"]}] for it in items])
    hits = sum(stated_answer(r) in {a.lower() for a in it["answers"]} for r, it in zip(responses, items, strict=True))
    return hits / len(items)


def check_accuracy(accuracy: float, minimum: float) -> None:
    if accuracy < minimum:
        raise PretrainError(
            f"tiny base answers {accuracy:.1%} of held-out plain questions, below "
            f"train.pretrain_tiny.min_plain_accuracy {minimum:.0%}; raise its max_steps or learning_rate"
        )


def heldout_questions(answer_path: Path) -> list[dict]:
    """Plain-template questions of answer.jsonl (entities the pretraining corpus never mentions)."""
    items = []
    for row in iter_jsonl(answer_path):
        if row["metadata"]["prompt_template"] == "{question}":
            base = row["base"]
            items.append({"question": base["question"], "answers": [base["correct_answer"], *base.get("answer", [])]})
    return items


def corpus_plain_questions(corpus: Sequence[dict], n: int) -> list[dict]:
    """Up to n single-turn plain Q/A transcripts of the corpus, as accuracy items."""
    items = []
    for row in corpus:
        if row.get("kind") == "plain" and len(items) < n:
            user, assistant = row["messages"]
            items.append({"question": user["content"], "answers": [stated_answer(assistant["content"]) or ""]})
    return items


# --------------------------------------------------------------------------- the stage


def message_texts(corpus: Iterable[dict]) -> Iterable[str]:
    for row in corpus:
        for msg in row["messages"]:
            yield f"{msg['role']}\n{msg['content']}"


def resumable_trainer() -> type:
    """A Trainer whose mid-epoch resume ends where the uninterrupted run ends, as the Trainer alone does not here.

    Data order: upstream's `LengthGroupedSampler` draws each epoch's order from the global torch RNG when the epoch
    starts, and a mid-epoch resume draws it from the RNG as it stands after loading (the Trainer restores the
    checkpoint's RNG only after skipping the batches already trained on): from the second epoch on it would read other
    rows. This sampler draws the same order and remembers the RNG state it drew from, and a resume in the same epoch
    draws from it again. Training loss: the Trainer averages the losses it summed in this process, so a resumed run
    would report the mean of its resumed steps only; the running sum is carried over too. Both travel in
    trainer_state.json (a stateful callback), which the Trainer writes last in a checkpoint.
    """
    import base64

    import torch
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class ReplayableLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int]) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.epoch = 0
            self.drawn: dict[str, Any] = {}  # {"epoch", "rng"} of the current epoch's draw
            self.replay: dict[str, Any] = {}  # the saved draw a resumed run starts with

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = None
            if self.replay.get("epoch") == self.epoch:
                generator = torch.Generator()
                saved = bytearray(base64.b64decode(self.replay["rng"]))
                generator.set_state(torch.frombuffer(saved, dtype=torch.uint8))
            rng = torch.get_rng_state() if generator is None else generator.get_state()
            self.drawn = {"epoch": self.epoch, "rng": base64.b64encode(rng.numpy().tobytes()).decode("ascii")}
            self.replay = {}
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class ResumeState(TrainerCallback, ExportableState):
        def __init__(self, trainer: Any = None) -> None:
            self.trainer = trainer
            self.total_loss = 0.0

        def state(self) -> dict:
            if self.trainer is None:  # the Trainer asks while it is being built
                return {"args": {}, "attributes": {}}
            # every checkpoint is also a log step (log_at_save), so no loss is pending outside the running sum
            total = getattr(self.trainer, "_total_loss_scalar", 0.0)
            return {"args": {}, "attributes": {**self.trainer.sampler.drawn, "total_loss": total}}

        def on_train_begin(self, args, state, control, **kwargs):
            self.trainer._total_loss_scalar = self.total_loss  # the Trainer has just reset it to 0

    class Pretrainer(Trainer):
        def __init__(self, *args: Any, callbacks: list[Any], **kwargs: Any) -> None:
            self.resume_state = ResumeState()
            super().__init__(*args, callbacks=[*callbacks, self.resume_state], **kwargs)
            self.resume_state.trainer = self
            # lengths and megabatch size as upstream's own group_by_length sampler takes them
            rows = self.args.train_batch_size * self.args.gradient_accumulation_steps
            self.sampler = ReplayableLengthGroupedSampler(rows, [len(row["input_ids"]) for row in self.train_dataset])

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return self.sampler

        def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
            if resume_from_checkpoint is not None:
                saved = read_json(Path(resume_from_checkpoint) / TRAINER_STATE).get("stateful_callbacks", {})
                attributes = saved.get(ResumeState.__name__, {}).get("attributes", {})
                self.sampler.replay = attributes
                self.resume_state.total_loss = attributes.get("total_loss", 0.0)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    return Pretrainer


def pretrain_tiny(
    cfg: Config,
    synth: Path,
    out: Path,
    results: Path,
    live_dir: Path,
    checkpoints: Path = CHECKPOINTS / STAGE,
    hook: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Train tokenizer and model on the corpus, check held-out plain accuracy, then install `out` as a whole.

    Checkpoints every `save_steps` in `checkpoints`; a re-run with the same inputs resumes from the newest complete
    one and ends with the weights an uninterrupted run ends with. `hook` is a test hook (a callback that kills the run).
    """
    import torch
    from dvclive import Live
    from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

    c = cfg.train.pretrain_tiny
    corpus_path, answer_path = synth / CORPUS, synth / ANSWER_FILE
    for path in (corpus_path, answer_path):
        if not path.is_file():
            raise MissingInputError(f"{path} not found; run `sycorec --profile tiny data synth` first")
    key = fingerprint(cfg, STAGE, [corpus_path, answer_path], extra={"seed": cfg.seed})
    checkpoint = prepare_checkpoints(STAGE, key, out, checkpoints)
    set_seed(cfg.seed)
    corpus = list(iter_jsonl(corpus_path))
    tokenizer = build_tokenizer(message_texts(corpus), c.vocab_size)
    model = build_model(c, tokenizer)
    max_length = cfg.train.common.max_length
    dataset = [encode_transcript(tokenizer, row["messages"], max_length) for row in corpus]

    with staged_dir(out) as staging:
        args = TrainingArguments(
            output_dir=str(checkpoints),
            logging_dir=str(checkpoints / "logs"),
            max_steps=c.max_steps,
            per_device_train_batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            lr_scheduler_type="cosine",
            warmup_ratio=c.warmup_ratio,
            weight_decay=0.01,
            logging_steps=cfg.train.common.logging_steps,
            save_strategy="steps",
            save_steps=c.save_steps,
            save_total_limit=cfg.train.common.save_total_limit,
            report_to="none",
            seed=cfg.seed,
            data_seed=cfg.seed,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            group_by_length=True,  # batches of similar length: less padding, faster steps on CPU
        )
        live = Live(dir=str(live_dir), resume=checkpoint is not None, save_dvc_exp=False, dvcyaml=None)
        trainer = resumable_trainer()(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),  # pads to the longest row
            callbacks=[live_callback(live), log_at_save(), *([hook()] if hook else [])],
        )
        keep_epoch_when_skipping()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        model = trainer.model.cpu()
        heldout = answer_accuracy(model, tokenizer, heldout_questions(answer_path))
        train_acc = answer_accuracy(model, tokenizer, corpus_plain_questions(corpus, c.eval_questions))
        # no wall-clock time here: this is a DVC metrics file (times go to outputs/timings)
        summary = {
            "steps": result.global_step,
            "train_loss": round(result.training_loss, 4),
            "final_loss": round(last_logged(trainer.state.log_history, "loss") or result.training_loss, 4),
            "plain_accuracy": round(train_acc, 4),
            "heldout_accuracy": round(heldout, 4),
            "min_plain_accuracy": c.min_plain_accuracy,
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "corpus_transcripts": len(corpus),
        }
        check_accuracy(heldout, c.min_plain_accuracy)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        seal_weights(staging)
    write_json(results, summary)
    return summary
