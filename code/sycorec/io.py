"""Small I/O helpers shared by every stage: atomic writes and directories, JSONL, hashing."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sycorec.errors import DiskFullError

_TMP_ATTEMPTS = 100


def create_temp(path: Path, directory: bool = False) -> Path:
    """A new empty file (or directory) beside `path`, made with mode 0666 (0777) so the umask sets its permissions.

    (tempfile.mkstemp/mkdtemp always make 0600/0700: results would be unreadable to a cluster project's group.)
    """
    for _ in range(_TMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            if directory:
                tmp.mkdir(0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")


# What to do when a write finds no room, by errno: a full disk or quota, or the file size limit (`ulimit -f`).
NO_ROOM = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "raise the file size limit (ulimit -f)"}


def disk_full(exc: OSError) -> bool:
    return exc.errno in NO_ROOM


def make_room(exc: OSError) -> str:
    return NO_ROOM.get(exc.errno, "free space")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    A full disk becomes a DiskFullError naming `path`; the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = create_temp(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFullError(f"{path}: {exc.strerror}; nothing was written, {make_room(exc)} and re-run") from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextmanager
def staged_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside `dest`; if the block succeeds it replaces `dest`, else it is removed.

    A full disk becomes a DiskFullError naming `dest`, which is left as it was. A staging directory that a killed
    run left beside `dest` is removed first (one stage writes one destination).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):  # a killed run's (a 16 GB model at full scale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    staging = create_temp(dest, directory=True)
    try:
        yield staging
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, DiskFullError) as exc:  # a file inside may already have said so: name the directory instead
        if isinstance(exc, DiskFullError) or disk_full(exc):
            raise DiskFullError(
                f"{dest}: no space left on device; nothing was written, free space and re-run"
            ) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHTS_RECORD = "weights.sha256.json"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def seal_weights(directory: Path) -> None:
    """Give the weight files under `directory` the umask's mode; record the full sha256 of its own in WEIGHTS_RECORD.

    safetensors creates its files 0600 whatever the umask; the record is what a cache keyed on these weights reads
    (hashing a 16 GB model once, when it is written).
    """
    mode = 0o666 & ~current_umask()
    record = {}
    for file in sorted(p for p in directory.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES)):
        file.chmod(mode)
        if file.parent == directory:
            record[file.name] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    write_json(directory / WEIGHTS_RECORD, record)
