"""The `generate` stage: one model's replies to every eval item, resumable (the output file is the cache).

Rows of `outputs/eval/generations/<model>/<dataset>.jsonl` are appended and flushed as batches finish, keyed by
(item_id, pass). A re-run skips rows already present; rows written for other weights or decoding settings (another
fingerprint) are dropped first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sycorec.config import Config
from sycorec.evaluation.backends import Backend, make_backend
from sycorec.evaluation.items import (
    challenge_messages,
    challenge_text,
    freeform_correct,
    is_mc,
    letters_of,
    load_manifest,
)
from sycorec.evaluation.store import AppendStore
from sycorec.facts import EvalDataset, eval_datasets
from sycorec.io import WEIGHT_SUFFIXES, WEIGHTS_RECORD, read_json, sha256_file
from sycorec.paths import ModelSource, generations_path, model_source


def row_key(row: dict) -> str:
    return f"{row['item_id']}:{row['pass']}"


def weights_digest(source: ModelSource) -> str:
    """The full sha256 of every weight file: from the record written when the model was saved, else computed now."""
    path = Path(source.path)
    if not path.is_dir():
        return f"{source.path}@{source.revision}"
    files = sorted(p for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    record_path = path / WEIGHTS_RECORD
    record = read_json(record_path) if record_path.is_file() else {}
    hashes = {}
    for file in files:
        entry = record.get(file.name)
        fresh = isinstance(entry, dict) and entry.get("size") == file.stat().st_size and "sha256" in entry
        hashes[file.name] = entry["sha256"] if fresh else sha256_file(file)  # a model saved without the record
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def fingerprint(cfg: Config, source: ModelSource) -> str:
    gen = cfg.generation
    settings = {
        "weights": weights_digest(source),
        "backend": gen.backend,
        "decoding": gen.decoding(),
        "sampler": "item-seeded",  # rows of the earlier batch-seeded transformers sampler are redone
        "challenge": gen.challenge,
        "mc_letters": gen.mc_letters,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _row(item: dict, fp: str, n_pass: int, response: str, **extra: Any) -> dict:
    return {
        "item_id": item["item_id"],
        "pass": n_pass,
        "dataset": item["dataset"],
        "template": item["template"],
        "sub_dataset": item["sub_dataset"],
        "seen": item["seen"],
        "response": response,
        "fingerprint": fp,
        **extra,
    }


class _Generator:
    """Runs the backend lazily: a run with everything already generated never loads the model."""

    def __init__(self, factory: Callable[[], Backend]) -> None:
        self.factory = factory
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self.factory()
        return self._backend


@dataclass
class _Run:
    """One dataset of one model: the lazily loaded backend, the output store and the rows' fingerprint."""

    gen: _Generator
    store: AppendStore
    fp: str

    def sample(self, todo: list[dict], convs: list[list], n_pass: int, **extra: Callable[[dict, str], Any]) -> None:
        """Sampled replies, appended as each batch finishes; `extra[name](item, text)` adds per-row fields."""
        if not todo:
            return
        keys = [f"{item['item_id']}:{n_pass}" for item in todo]
        for batch in self.gen.backend.generate(convs, keys):
            self.store.append(
                _row(todo[i], self.fp, n_pass, text, **{k: f(todo[i], text) for k, f in extra.items()})
                for i, text in batch
            )

    def choose(self, todo: list[dict], letters: str) -> None:
        """MC pass 1: a greedy pick among the offered option letters after the "The answer is (" prefill."""
        if not todo:
            return
        offered = [letters_of(i, letters) for i in todo]
        for batch in self.gen.backend.choose([i["messages"] for i in todo], offered):
            self.store.append(
                _row(
                    todo[i],
                    self.fp,
                    1,
                    letter,
                    is_mc=True,
                    pass1_letter=letter,
                    pass1_correct=letter == todo[i]["base"]["correct_letter"],
                )
                for i, letter in batch
            )


def _two_pass(run: _Run, items: list[dict], todo: list[dict], mode: str, letters: str) -> None:
    run.choose([i for i in todo if is_mc(i)], letters)
    free = [i for i in todo if not is_mc(i)]
    run.sample(
        free,
        [i["messages"] for i in free],
        1,
        is_mc=lambda i, t: False,
        pass1_letter=lambda i, t: None,
        pass1_correct=freeform_correct,
    )
    # pass 2: challenge only what pass 1 got right
    first = {i["item_id"]: run.store.get(f"{i['item_id']}:1") for i in items}
    todo2 = [i for i in items if first[i["item_id"]]["pass1_correct"] and f"{i['item_id']}:2" not in run.store]
    convs = {i["item_id"]: challenge_messages(i, first[i["item_id"]], mode) for i in todo2}
    run.sample(
        todo2,
        list(convs.values()),
        2,
        is_mc=lambda i, t: is_mc(i),
        challenge=lambda i, t: challenge_text(i, mode),
        messages=lambda i, t: convs[i["item_id"]],
    )


def generate_dataset(
    cfg: Config, model: str, dataset: str, spec: EvalDataset, gen: _Generator, fp: str
) -> dict[str, int]:
    items = load_manifest(cfg, dataset)
    store = AppendStore(generations_path(cfg, model, dataset), row_key, keep=lambda r: r.get("fingerprint") == fp)
    run = _Run(gen, store, fp)
    before = len(store)
    todo = [item for item in items if f"{item['item_id']}:1" not in store]
    if spec.mode == "two_pass":
        _two_pass(run, items, todo, cfg.generation.challenge, cfg.generation.mc_letters)
    else:
        run.sample(todo, [i["messages"] for i in todo], 1)
    return {"items": len(items), "rows": len(store), "new": len(store) - before}


def generate_model(cfg: Config, model: str, backend: Backend | None = None) -> dict[str, dict[str, int]]:
    """Generate every selected dataset (two-pass ones: pass 1, then the challenge pass 2) for one model."""
    source = model_source(cfg, model)
    fp = fingerprint(cfg, source)
    gen = _Generator(lambda: backend or make_backend(cfg, source))
    return {name: generate_dataset(cfg, model, name, spec, gen, fp) for name, spec in eval_datasets(cfg).items()}
