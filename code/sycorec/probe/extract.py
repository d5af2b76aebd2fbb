"""Residual-stream activations at the last prompt token, every decoder layer, for the probing prompt set.

As in the study: the user message is formatted with the BASE model's chat template (generation prompt, thinking off,
so the prompt ends after the empty think block) for every model; left padding, so the last position is the last prompt
token; layer l = hidden_states[l + 1]. Stored as float32 [L, N, D] with the prompt ids. Batches are written as shards
under `<model>.partial/` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sycorec.chat import render_chat
from sycorec.config import Config
from sycorec.errors import DataError, MissingInputError
from sycorec.io import atomic_path, sha256_text
from sycorec.paths import ModelSource, activations_path, model_source

TENSOR = "activations"


def load_tokenizer(source: ModelSource, max_length: int):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
    tok.padding_side = "left"
    tok.truncation_side = "left"  # keep the generation prompt if a prompt is ever too long
    tok.model_max_length = max_length
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def format_prompts(tokenizer, prompts: list[dict]) -> list[str]:
    return [render_chat(tokenizer, p["messages"], add_generation_prompt=True) for p in prompts]


@torch.no_grad()
def last_token_states(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """[L, len(texts), D] float32 hidden states of every decoder layer at the last prompt token."""
    batch = tokenizer(
        texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length, add_special_tokens=False
    ).to(model.device)
    # positions from the mask, so a prompt's activations do not depend on how much padding its batch has
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    out = model(**batch, position_ids=positions, output_hidden_states=True, use_cache=False)
    states = out.hidden_states[1:]  # index 0 is the embeddings
    return torch.stack([h[:, -1, :] for h in states]).float().cpu()


def _fingerprint(source: ModelSource, tokenizer_source: ModelSource, item_ids: list[str], max_length: int) -> str:
    return sha256_text(json.dumps([source.path, source.revision, tokenizer_source.path, item_ids, max_length]))


def extract(cfg: Config, run: str, model_name: str, prompts: list[dict], progress: bool = True) -> Path:
    """Write `outputs/probing/<run>/activations/<model>.safetensors`; resumable from per-batch shards."""
    from transformers import AutoModelForCausalLM

    if not prompts:
        raise DataError("the probing prompt set is empty")
    probing = cfg.probing
    source, tok_source = model_source(cfg, model_name), model_source(cfg, "base")
    item_ids = [p["item_id"] for p in prompts]
    out_path = activations_path(cfg, run, model_name)
    shards = out_path.with_name(f"{model_name}.partial")
    key = _fingerprint(source, tok_source, item_ids, probing.max_length)
    stamp = shards / "fingerprint.txt"
    if shards.exists() and (not stamp.is_file() or stamp.read_text() != key):
        shutil.rmtree(shards)  # shards of another prompt set or model version
    shards.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)

    tokenizer = load_tokenizer(tok_source, probing.max_length)
    texts = format_prompts(tokenizer, prompts)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        source.path,
        revision=source.revision,
        torch_dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation=cfg.base_model.attn_implementation if cuda else "sdpa",
    ).to("cuda" if cuda else "cpu")
    model.eval()
    starts = range(0, len(texts), probing.batch_size)
    for i, start in enumerate(tqdm(starts, desc=f"extract {model_name}", unit="batch", disable=not progress)):
        shard = shards / f"batch_{i:06d}.safetensors"
        if shard.is_file():
            continue
        states = last_token_states(model, tokenizer, texts[start : start + probing.batch_size], probing.max_length)
        with atomic_path(shard) as tmp:
            save_file({TENSOR: states.contiguous()}, str(tmp))
    acts = torch.cat([load_file(str(shards / f"batch_{i:06d}.safetensors"))[TENSOR] for i in range(len(starts))], 1)
    metadata = {
        "model": model_name,
        "item_ids": json.dumps(item_ids),
        "n_layers": str(acts.shape[0]),
        "hidden_size": str(acts.shape[2]),
        "tokenizer": tok_source.path,
        "fingerprint": key,
    }
    with atomic_path(out_path) as tmp:
        save_file({TENSOR: acts.contiguous()}, str(tmp), metadata=metadata)
        sort_header(tmp)
    shutil.rmtree(shards)
    return out_path


def sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place: safetensors writes its metadata in hash
    order, which differs from process to process, so the same activations would be different bytes (and a forced
    re-extraction would mark the analysis stale). The sorted header has the same length; spaces pad it as before."""
    with path.open("r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:
            raise ValueError(f"{path}: the sorted header is longer than the one safetensors wrote")
        fh.seek(8)
        fh.write(text.ljust(size))


def load_activations(cfg: Config, run: str, model: str, item_ids: list[str]) -> torch.Tensor:
    """[L, N, D] float32 activations of `model`, checked against the prompt set's ids and order."""
    path = activations_path(cfg, run, model)
    command = f"sycorec probe extract --run {run} --model {model}"
    if not path.is_file():
        raise MissingInputError(f"activations of {model!r} not found at {path} (run `{command}`)")
    with safe_open(str(path), framework="pt") as fh:
        stored = json.loads(fh.metadata()["item_ids"])
        if stored != item_ids:
            raise DataError(f"{path} holds another prompt set; re-run `{command}`")
        return fh.get_tensor(TENSOR)
