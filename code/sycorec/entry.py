"""The `sycorec` console entry: hands the command to the demo's warm server when one is running (see warmstart)."""

from __future__ import annotations

import sys

from sycorec.warmstart import forward


def main() -> None:
    status = forward(sys.argv)
    if status is not None:
        sys.exit(status)
    from sycorec.cli import main as cli

    cli()
