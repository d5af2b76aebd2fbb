"""The study's one way to render a chat: Qwen3's chat template with thinking off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render_chat(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Chat-template text with thinking off, as every stage of the study renders it."""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False
    )


def render_prompt(tokenizer: Any, messages: Sequence[dict]) -> str:
    """Generation prompt for `messages`; a final assistant message is a prefill appended after the prompt."""
    if messages and messages[-1]["role"] == "assistant":
        return render_chat(tokenizer, messages[:-1], add_generation_prompt=True) + messages[-1]["content"]
    return render_chat(tokenizer, messages, add_generation_prompt=True)
