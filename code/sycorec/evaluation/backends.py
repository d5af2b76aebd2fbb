"""Generation backends behind one interface: vLLM's offline engine (GPU) and transformers `generate` (CPU, fallback).

Both render chats the study's way (thinking off; an assistant last message is a prefill appended raw after the
generation prompt) and stream results batch by batch so the caller can persist them as they arrive.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

from sycorec.chat import render_prompt
from sycorec.config import Config, GenerationCfg
from sycorec.errors import SycorecError
from sycorec.hub import require_gpu
from sycorec.paths import ModelSource

Message = dict[str, str]
Batch = list[tuple[int, str]]  # (index into the request list, text)

VLLM_CHUNK = 2048  # prompts per vLLM call: big enough to saturate the engine, small enough to persist progress


class Backend(Protocol):
    def generate(self, conversations: Sequence[list[Message]], keys: Sequence[str]) -> Iterator[Batch]:
        """Sampled replies, yielded in batches of (index, text)."""

    def choose(self, conversations: Sequence[list[Message]], choices: Sequence[list[str]]) -> Iterator[Batch]:
        """Greedy pick of one of `choices[i]` as the next token (multiple-choice pass 1)."""


def item_seed(seed: int, key: str) -> int:
    """A per-item sampling seed (both backends): a resumed run samples each item as an uninterrupted one would."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


# --------------------------------------------------------------------------- vLLM


def vllm_engine_kwargs(cfg: Config, source: ModelSource) -> dict[str, Any]:
    gen = cfg.generation
    dtype, caching = cfg.base_model.dtype, gen.enable_prefix_caching
    return gen.engine_kwargs(source.path, source.revision, dtype, gen.seed, enable_prefix_caching=caching)


def vllm_sampling_kwargs(gen: GenerationCfg, seed: int) -> dict[str, Any]:
    return {
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "top_k": gen.top_k,
        "max_tokens": gen.max_new_tokens,
        "seed": seed,
    }


def vllm_choice_kwargs(letters: Sequence[str]) -> dict[str, Any]:
    """Greedy one-token guided choice among the option letters (the study's MC pass 1)."""
    return {"temperature": 0.0, "max_tokens": 1, "guided_decoding": {"choice": list(letters)}}


def sampling_params(kwargs: dict[str, Any]) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import GuidedDecodingParams

    kwargs = dict(kwargs)
    if "guided_decoding" in kwargs:
        kwargs["guided_decoding"] = GuidedDecodingParams(**kwargs["guided_decoding"])
    return SamplingParams(**kwargs)


class VLLMBackend:
    def __init__(self, cfg: Config, source: ModelSource) -> None:
        require_gpu("generation.backend=vllm")
        from vllm import LLM

        self.gen = cfg.generation
        self.llm = LLM(**vllm_engine_kwargs(cfg, source))
        self.tokenizer = self.llm.get_tokenizer()

    def _run(self, conversations: Sequence[list[Message]], params: list[Any], desc: str) -> Iterator[Batch]:
        texts = [render_prompt(self.tokenizer, c) for c in conversations]
        prompts = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
        for start in tqdm(range(0, len(prompts), VLLM_CHUNK), desc=desc, unit="chunk"):
            stop = start + VLLM_CHUNK
            outputs = self.llm.generate(prompts[start:stop], params[start:stop], use_tqdm=True)
            yield [(start + i, out.outputs[0].text) for i, out in enumerate(outputs)]

    def generate(self, conversations: Sequence[list[Message]], keys: Sequence[str]) -> Iterator[Batch]:
        params = [sampling_params(vllm_sampling_kwargs(self.gen, item_seed(self.gen.seed, k))) for k in keys]
        yield from self._run(conversations, params, "vllm generate")

    def choose(self, conversations: Sequence[list[Message]], choices: Sequence[list[str]]) -> Iterator[Batch]:
        params = [sampling_params(vllm_choice_kwargs(c)) for c in choices]
        yield from self._run(conversations, params, "vllm choice")


# --------------------------------------------------------------------------- transformers


def hf_generate_kwargs(gen: GenerationCfg) -> dict[str, Any]:
    """transformers decodes greedily: when sampling, ItemSampler has already left one token per row to pick."""
    # None clears sampling settings a model's generation_config may carry (they would only trigger warnings)
    return {"max_new_tokens": gen.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}


class ItemSampler:
    """A transformers logits processor that samples every row from its own random stream, seeded by its item.

    transformers' own sampling draws the whole batch from one global RNG, so a reply would depend on which
    items share its batch, the batch size and where a resumed run restarts. Here row r applies the same warpers
    in the same order as transformers and vLLM (temperature, top-k, top-p), then inverts its CDF at one uniform
    draw from `random.Random(item_seed(seed, key_r))`: its reply is a function of the model, the item and the
    sampling params alone. All other logits become -inf, so greedy decoding picks the sampled token.
    (One Python draw per row and step, the rest vectorized: a per-row torch.multinomial loop tripled the cost.)
    """

    def __init__(self, gen: GenerationCfg, seeds: Sequence[int]) -> None:
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers: list[Any] = [TemperatureLogitsWarper(gen.temperature)]
        if gen.top_k > 0:
            warpers.append(TopKLogitsWarper(gen.top_k))
        if gen.top_p < 1.0:
            warpers.append(TopPLogitsWarper(gen.top_p))
        self.torch = torch
        self.warp = LogitsProcessorList(warpers)
        self.streams = [random.Random(seed) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        probs = torch.softmax(self.warp(input_ids, scores).double(), dim=-1)
        cdf = probs.cumsum(-1)
        draws = torch.tensor([s.random() for s in self.streams], dtype=torch.float64, device=cdf.device)
        picks = torch.searchsorted(cdf, (draws[:, None] * cdf[:, -1:]).contiguous(), right=True)
        last_kept = (probs > 0).cumsum(-1).argmax(-1, keepdim=True)  # rounding never lands on a dropped token
        picks = torch.minimum(picks, last_kept)
        chosen = torch.full_like(scores, float("-inf"))
        chosen.scatter_(1, picks, 0.0)
        return chosen


class HFBackend:
    """Batched transformers generation with left padding; the longest prompts go first so batches stay tight."""

    def __init__(self, cfg: Config, source: ModelSource, model: Any = None, tokenizer: Any = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.gen = cfg.generation
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
        if model is None:
            dtype = getattr(torch, cfg.base_model.dtype) if self.device == "cuda" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, dtype=dtype)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.eos = sorted(t for t in stops if isinstance(t, int) and t != tokenizer.unk_token_id)

    def _batches(self, texts: list[str], desc: str) -> Iterator[list[int]]:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        size = self.gen.batch_size
        for start in tqdm(range(0, len(order), size), desc=desc, unit="batch"):
            yield order[start : start + size]

    def _encode(self, texts: list[str]) -> Any:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc.to(self.device)

    def generate(self, conversations: Sequence[list[Message]], keys: Sequence[str]) -> Iterator[Batch]:
        texts = [render_prompt(self.tokenizer, c) for c in conversations]
        kwargs = hf_generate_kwargs(self.gen)
        for idx in self._batches(texts, "hf generate"):
            enc = self._encode([texts[i] for i in idx])
            if self.gen.temperature > 0:
                sampler = ItemSampler(self.gen, [item_seed(self.gen.seed, keys[i]) for i in idx])
                kwargs["logits_processor"] = [sampler]
            with self.torch.inference_mode():
                out = self.model.generate(
                    **enc, **kwargs, eos_token_id=self.eos, pad_token_id=self.tokenizer.pad_token_id
                )
            new = out[:, enc["input_ids"].shape[1] :]
            yield list(zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True))

    def letter_token(self, letter: str) -> int:
        ids = self.tokenizer.encode(letter, add_special_tokens=False)
        if not ids:
            raise SycorecError(f"tokenizer cannot encode option letter {letter!r}")
        return ids[0]

    def choose(self, conversations: Sequence[list[Message]], choices: Sequence[list[str]]) -> Iterator[Batch]:
        """Argmax over the allowed letters' next-token logits: the transformers analogue of guided choice."""
        texts = [render_prompt(self.tokenizer, c) for c in conversations]
        for idx in self._batches(texts, "hf choice"):
            enc = self._encode([texts[i] for i in idx])
            # positions count real tokens only, as in generate() with left padding
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with self.torch.inference_mode():
                logits = self.model(**enc, position_ids=positions).logits[:, -1, :]
            picks = []
            for row, i in enumerate(idx):
                ids = [self.letter_token(letter) for letter in choices[i]]
                best = int(self.torch.argmax(logits[row, ids]))
                picks.append((i, choices[i][best]))
            yield picks


def make_backend(cfg: Config, source: ModelSource) -> Backend:
    if cfg.generation.backend == "vllm":
        return VLLMBackend(cfg, source)
    return HFBackend(cfg, source)
