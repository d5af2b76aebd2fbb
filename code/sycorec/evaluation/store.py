"""Append-only JSONL stores that survive being killed: rows are flushed one by one, a torn last line is dropped."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sycorec.errors import DiskFullError
from sycorec.io import disk_full, write_jsonl

Key = Callable[[dict], str]


def recover_rows(path: Path) -> list[dict]:
    """Every complete row of `path`; a torn or foreign line (unterminated, not UTF-8, not JSON, not a JSON object)
    ends the trusted prefix and is cut off the file with everything after it, so it is redone."""
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
                row = json.loads(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError too
            except ValueError:
                break
            if not isinstance(row, dict):
                break
            rows.append(row)
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
        rows = recover_rows(self.path)
        kept = [row for row in rows if self._has_key(row) and (keep is None or keep(row))]
        if len(kept) != len(rows):  # stale rows (e.g. another model fingerprint): rewrite without them
            self._rewrite(kept)
        self.rows: dict[str, dict] = {}
        for row in kept:
            self.rows.setdefault(self.key(row), row)

    def _has_key(self, row: dict) -> bool:
        """A foreign object (another file's row, a hand edit) has no key: drop it rather than crash."""
        try:
            self.key(row)
        except (KeyError, TypeError):
            return False
        return True

    def _rewrite(self, rows: list[dict]) -> None:
        write_jsonl(self.path, rows)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def append(self, rows: Iterable[dict]) -> int:
        """Append rows whose key is new; each line is flushed before the next (a killed process loses no row).

        A full disk cuts the file back to its last whole row and raises DiskFullError naming it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        added = 0
        with self.path.open("ab", buffering=0) as fh:
            good = fh.seek(0, os.SEEK_END)
            try:
                for row in rows:
                    k = self.key(row)
                    if k in self.rows:
                        continue
                    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
                    while data:  # an unbuffered write may be partial
                        data = data[fh.write(data) :]
                    good = fh.tell()
                    self.rows[k] = row
                    added += 1
                os.fsync(fh.fileno())
            except OSError as exc:
                if not disk_full(exc):
                    raise
                fh.truncate(good)
                raise DiskFullError(
                    f"{self.path}: {exc.strerror} after {added} new rows; the file ends at its last whole row, "
                    "free space and re-run to continue"
                ) from None
        return added

    def values(self) -> list[Any]:
        return list(self.rows.values())
