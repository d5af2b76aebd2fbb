"""Helpers shared by the cluster kit's tests."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sycorec.cli import main

SHA = "0123456789abcdef0123456789abcdef01234567"


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)
