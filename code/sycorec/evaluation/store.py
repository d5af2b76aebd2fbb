"""Append-only JSONL stores that survive being killed: rows are flushed one by one, a torn last line is dropped,
a damaged line elsewhere is set aside."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from sycorec.errors import DiskFullError
from sycorec.io import atomic_path, disk_full, make_room, write_jsonl

Key = Callable[[dict], str]


def _parse(line: bytes) -> dict | None:
    try:
        row = json.loads(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError too
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def recover_rows(path: Path) -> list[dict]:
    """Every complete row of `path`, none of them lost to a damaged line.

    A bad line (unterminated, not UTF-8, not JSON, not a JSON object) after the last good row is what a killed writer
    leaves: it is cut off, so it is redone. A bad line before a good row is damage (a bad sector, a hand edit): it is
    appended to `<path>.damaged` for inspection, the file is rewritten without it and one line on stderr says so.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict] = []
    kept: list[bytes] = []
    damaged: list[tuple[int, bytes]] = []
    tail: list[tuple[int, bytes]] = []  # bad lines since the last good row
    lines = data.split(b"\n")
    good_end = 0
    pos = 0
    for number, line in enumerate(lines, 1):
        if number == len(lines):  # after the last newline: empty, or a row the writer did not finish
            break
        pos += len(line) + 1
        if not line.strip():
            continue
        row = _parse(line)
        if row is None:
            tail.append((number, line))
            continue
        damaged += tail
        tail = []
        rows.append(row)
        kept.append(line + b"\n")
        good_end = pos
    if damaged:
        with path.with_name(path.name + ".damaged").open("ab") as fh:
            fh.write(b"".join(line + b"\n" for _, line in damaged))
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(kept))  # the good rows byte for byte
        where = ", ".join(str(number) for number, _ in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
        click.echo(
            f"warning: {path}: {len(damaged)} damaged line(s) (line {where}) set aside in {path.name}.damaged; "
            f"{len(rows)} rows kept",
            err=True,
        )
    elif good_end < len(data):
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
                    f"{make_room(exc)} and re-run to continue"
                ) from None
        return added

    def values(self) -> list[Any]:
        return list(self.rows.values())
