"""Activation extraction on a tiny random Qwen3 with a Qwen-style chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from sycorec.cli import main
from sycorec.config import Config, load_config
from sycorec.paths import activations_path, model_source
from sycorec.probe import extract as extract_mod
from sycorec.probe.extract import TENSOR, extract, format_prompts, load_tokenizer
from tiny_model import random_qwen3

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
WORDS = ["[UNK]", "user", "assistant", "what", "is", "the", "capital", "of", "i", "think", "answer", "?", ".", ","]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
PROMPTS = [
    {"item_id": f"i{k}", "messages": [{"role": "user", "content": text}]}
    for k, text in enumerate(
        [
            "what is the capital of france ?",
            "what is the capital ? i think the answer is paris .",
            "i think",
            "what is the answer , i think the capital of the capital is the answer ?",
            "capital ?",
        ]
    )
]


def _save_tiny(path: Path, seed: int) -> None:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    random_qwen3(tok, path, seed)
    tok.save_pretrained(path)


@pytest.fixture()
def cfg(run_root: Path) -> Config:
    cfg = load_config("params.yaml", "tiny")
    _save_tiny(cfg.paths.models / "base", seed=0)
    _save_tiny(cfg.paths.models / "sft", seed=1)
    return cfg.model_copy(update={"probing": cfg.probing.model_copy(update={"batch_size": 2})})


def _alone(cfg: Config, model: str, prompt: dict) -> torch.Tensor:
    """[L, D] states of one unpadded prompt, straight from transformers."""
    tok = load_tokenizer(model_source(cfg, "base"), cfg.probing.max_length)
    lm = Qwen3ForCausalLM.from_pretrained(model_source(cfg, model).path).eval()
    ids = tok(format_prompts(tok, [prompt]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hidden = lm(**ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 3  # embeddings + one per decoder layer
    return torch.stack([h[0, -1] for h in hidden[1:]])


def test_extract_last_token_every_layer(cfg: Config) -> None:
    tok = load_tokenizer(model_source(cfg, "base"), cfg.probing.max_length)
    assert format_prompts(tok, PROMPTS[:1])[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    path = extract(cfg, "R6", "sft", PROMPTS, progress=False)
    assert path == activations_path(cfg, "R6", "sft")
    with safe_open(str(path), framework="pt") as fh:
        acts = fh.get_tensor(TENSOR)
        assert json.loads(fh.metadata()["item_ids"]) == [p["item_id"] for p in PROMPTS]
    assert acts.shape == (2, len(PROMPTS), 32) and acts.dtype == torch.float32
    for i, prompt in enumerate(PROMPTS):  # left padding in a batch gives the prompt's own last-token states
        torch.testing.assert_close(acts[:, i], _alone(cfg, "sft", prompt), atol=1e-4, rtol=1e-4)
    assert not path.with_name("sft.partial").exists()


def test_extract_resumes_from_shards(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    real = extract_mod.last_token_states
    calls: list[int] = []

    def failing(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "last_token_states", failing)
    with pytest.raises(RuntimeError):
        extract(cfg, "R6", "base", PROMPTS, progress=False)
    assert not activations_path(cfg, "R6", "base").exists()
    assert (activations_path(cfg, "R6", "base").with_name("base.partial") / "batch_000000.safetensors").is_file()
    calls.clear()
    monkeypatch.setattr(extract_mod, "last_token_states", lambda *a, **k: (calls.append(len(a[2])), real(*a, **k))[1])
    extract(cfg, "R6", "base", PROMPTS, progress=False)
    assert calls == [2, 1]  # batch 0 came from its shard
    with safe_open(str(activations_path(cfg, "R6", "base")), framework="pt") as fh:
        torch.testing.assert_close(fh.get_tensor(TENSOR)[:, 0], _alone(cfg, "base", PROMPTS[0]), atol=1e-4, rtol=1e-4)


def test_extract_command_rejects_unknown_model(cfg: Config) -> None:
    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "extract", "--run", "R6", "--model", "nope"])
    assert result.exit_code == 2 and "probing.runs.R6.models" in result.output


def test_a_forced_re_extraction_writes_the_same_bytes(cfg: Config) -> None:
    """safetensors writes its metadata in hash order; the header is sorted so DVC sees the same file again."""
    path = extract(cfg, "R6", "base", PROMPTS, progress=False)
    first = path.read_bytes()
    for _ in range(3):
        path.unlink()
        assert extract(cfg, "R6", "base", PROMPTS, progress=False).read_bytes() == first
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["item_ids"]) == [p["item_id"] for p in PROMPTS]
