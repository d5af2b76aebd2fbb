"""The demo's stage processes: `sycorec` as the demo's DVC stages run it (first on their PATH: the warm server's child,
or this process when none answers, following the CPU share) and, with `--serve SOCKET [MODULES]`, the warm server."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sycorec.demo.cpushare import follow_share
from sycorec.demo.warmstart import PRELOAD, forward, serve


def run_cli(argv: Sequence[str]) -> None:
    from sycorec.cli import main as cli

    follow_share()  # a stage the demo runs beside others takes its share of the CPUs
    cli.main(args=list(argv[1:]), prog_name="sycorec")


def main() -> None:
    status = forward(sys.argv)
    if status is not None:
        sys.exit(status)
    run_cli(sys.argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], run_cli, PRELOAD if len(sys.argv) < 4 else sys.argv[3].split(","))
    else:
        main()
