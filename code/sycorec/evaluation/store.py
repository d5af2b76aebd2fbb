"""Append-only JSONL stores that survive being killed: rows are flushed one by one, a torn last line is dropped."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sycorec.io import write_jsonl

Key = Callable[[dict], str]


def load_rows(path: Path) -> list[dict]:
    """Every complete row of `path`; a torn (unterminated or unparseable) last line is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # last line has no newline: the writer died mid-row
            break
        line = data[pos:end]
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a broken line ends the trusted prefix
        pos = end + 1
        good_end = pos
    if good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return rows


class AppendStore:
    """A JSONL file keyed by `key(row)`; the first row of a key wins, later duplicates are ignored."""

    def __init__(self, path: str | os.PathLike, key: Key, keep: Callable[[dict], bool] | None = None) -> None:
        self.path = Path(path)
        self.key = key
        rows = load_rows(self.path)
        kept = [row for row in rows if keep is None or keep(row)]
        if len(kept) != len(rows):  # stale rows (e.g. another model fingerprint): rewrite without them
            self._rewrite(kept)
        self.rows: dict[str, dict] = {}
        for row in kept:
            self.rows.setdefault(self.key(row), row)

    def _rewrite(self, rows: list[dict]) -> None:
        write_jsonl(self.path, rows)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def append(self, rows: Iterable[dict]) -> int:
        """Append rows whose key is new; each line is flushed before the next (a killed process loses no row)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        added = 0
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                k = self.key(row)
                if k in self.rows:
                    continue
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                self.rows[k] = row
                added += 1
            os.fsync(fh.fileno())
        return added

    def values(self) -> list[Any]:
        return list(self.rows.values())
