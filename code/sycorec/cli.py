"""`sycorec` command line: one group per stage family, each a thin wrapper over plain functions."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import sys

import click
import yaml

from sycorec import __version__
from sycorec.config import load_config
from sycorec.errors import SycorecError
from sycorec.hub import first_line, hub_unreachable
from sycorec.io import disk_full, make_room
from sycorec.provenance import environment_block

# Stage commands are imported only when invoked, so `sycorec --help` and each stage start fast
# and a stage never pays for another's imports.
LAZY_COMMANDS = {
    "data": "sycorec.data.cli:data",
    "train": "sycorec.train.cli:train",
    "generate": "sycorec.evaluation.cli:generate",
    "judge": "sycorec.evaluation.cli:judge",
    "score": "sycorec.evaluation.cli:score",
    "compare": "sycorec.evaluation.cli:compare",
    "probe": "sycorec.probe.cli:probe",
    "report": "sycorec.report.cli:report",
    "prefetch": "sycorec.cluster.cli:prefetch",
    "slurm": "sycorec.cluster.cli:slurm",
    "demo": "sycorec.demo.cli:demo",
    "reproduce": "sycorec.reproduce:reproduce",
}


class SycorecGroup(click.Group):
    """Loads stage commands lazily; turns a SycorecError anywhere below into one line on stderr and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SycorecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            line = library_failure(exc, ctx.invoked_subcommand or ctx.info_name)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(2)


# safetensors reports an OS error inside its message only: `I/O error: File too large (os error 27)` (older releases:
# `IoError(Os { code: 28, ... })`); torch's zip writer drops the errno: `[enforce fail at inline_container.cc:626] .
# unexpected pos 384 vs 342` or `... PytorchStreamWriter failed writing file data/0: file write failed`.
SAFETENSORS_OS_ERROR = re.compile(r"os error (\d+)|Os \{ code: (\d+)")
TORCH_ZIP_WRITER = "inline_container.cc"


def library_failure(exc: Exception, stage: str) -> str | None:
    """One line for what a library raises about the machine, not the code: a full disk, a file or folder this user
    may not read or write, an unreachable HF hub."""
    if isinstance(exc, OSError) and disk_full(exc):  # trainer checkpoints, model saves
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror} (sycorec {stage}); {make_room(exc)} and re-run"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror} (sycorec {stage}); give this user access to it (or its folder) and re-run"
    if type(exc).__name__ == "SafetensorError" and (code := SAFETENSORS_OS_ERROR.search(str(exc))):
        error = OSError(int(code.group(1) or code.group(2)), "")
        if disk_full(error):
            return f"safetensors: {os.strerror(error.errno)} (sycorec {stage}); {make_room(error)} and re-run"
    if isinstance(exc, RuntimeError) and TORCH_ZIP_WRITER in str(exc):
        return (
            f"torch could not write a file (sycorec {stage}: {first_line(exc)}); a full disk or quota or the file "
            "size limit (ulimit -f) is the usual cause: make room and re-run"
        )
    if hub_unreachable(exc):  # from_pretrained of a hub id that is not cached
        return (
            f"sycorec {stage}: the Hugging Face hub cannot be reached and a file is not in the HF cache "
            f"({first_line(exc)}); check the network, or run `sycorec prefetch` on a node with network"
        )
    return None


@click.group(cls=SycorecGroup)
@click.version_option(__version__, prog_name="sycorec")
@click.option("--params", default="params.yaml", show_default=True, help="Params file of the run.")
@click.option("--profile", default=None, help="Overlay profiles/<name>.yaml (e.g. tiny) on the params file.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Train on N GPUs (accelerate launch, DDP).")
@click.pass_context
def main(ctx: click.Context, params: str, profile: str | None, gpus: int | None) -> None:
    """Reproduce the sycophancy-recovery study: data, training, evaluation, probing, report."""
    ctx.obj = {"params": params, "profile": profile}
    if gpus is not None:
        from sycorec.launch import relaunch

        if relaunch(gpus):
            ctx.exit(0)


@main.group()
def config() -> None:
    """Inspect the resolved configuration."""


@config.command("show")
@click.option("--profile", default=None, help="Overlay profiles/<name>.yaml (same as the global --profile).")
@click.pass_context
def config_show(ctx: click.Context, profile: str | None) -> None:
    """Print the validated config (params file + optional profile) as YAML."""
    obj = ctx.find_root().obj
    cfg = load_config(obj["params"], profile or obj["profile"])
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)


@config.command("check")
@click.option("--profile", default=None, help="Overlay profiles/<name>.yaml (same as the global --profile).")
@click.pass_context
def config_check(ctx: click.Context, profile: str | None) -> None:
    """Validate the config; print `ok` or one line naming the bad key."""
    obj = ctx.find_root().obj
    load_config(obj["params"], profile or obj["profile"])
    click.echo("ok")


@main.command("env")
def env() -> None:
    """Print the provenance block: git, lock hash, library versions, hardware, image digest."""
    click.echo(json.dumps(environment_block(), indent=2))
