"""The one random tiny Qwen3 the unit tests share (each test keeps the tokenizer its case needs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def random_qwen3(tokenizer: Any, out: Path | None = None, seed: int = 0) -> Any:
    """A 2-layer, hidden-32 Qwen3 with random weights sized to `tokenizer`; saved to `out` when given."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    if out is not None:
        model.save_pretrained(str(out))
    return model
