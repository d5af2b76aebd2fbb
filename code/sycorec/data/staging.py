"""Write a whole output directory or nothing: build it beside its destination, then swap it in by rename."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sycorec.errors import DiskFullError
from sycorec.io import create_temp, disk_full


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
