"""`sycorec data ...`: validate, fetch and prepare the datasets (thin wrappers over plain functions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sycorec.clikit import Config, pass_config, stage
from sycorec.data.fetch import MANIFEST, check_installed, fetch
from sycorec.data.prepare import prepare
from sycorec.data.schema import KINDS, validate_file
from sycorec.paths import raw_dir

PINS_OPTION = click.option(
    "--pins",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Pin table to verify against (default: the packaged schemas/pins.yaml).",
)


@click.group()
def data() -> None:
    """Fetch, synthesize, validate and prepare datasets."""


@data.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Kind of every file (default: from name/content).")
def validate(paths: tuple[Path, ...], kind: str | None) -> None:
    """Check each file against its schema; print one JSON report; exit 1 if any file has errors."""
    reports = [validate_file(path, kind) for path in paths]
    click.echo(json.dumps({"files": [r.to_json() for r in reports]}, indent=2))
    if any(r.errors for r in reports):
        sys.exit(1)


@data.command("fetch")
@click.option(
    "--mirror",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Take the files from this directory (raw layout) instead of the network; same verification.",
)
@PINS_OPTION
@stage("fetch")
def fetch_cmd(cfg: Config, mirror: Path | None, pins: Path | None) -> None:
    """Download the pinned inputs into paths.raw, verify them all, then install them at once."""
    manifest = fetch(cfg.data, cfg.paths.raw, mirror=mirror, pins_path=pins)
    for name, facts in manifest["files"].items():
        click.echo(f"{name}: {facts['rows']} rows, sha256 {facts['sha256'][:12]}…")
    click.echo(f"wrote {cfg.paths.raw}/{MANIFEST}; record it with `make data` (verify, then `dvc commit -f data.dvc`)")


@data.command("verify")
@PINS_OPTION
@pass_config
def verify_cmd(cfg: Config, pins: Path | None) -> None:
    """Check that paths.raw holds exactly what `data fetch` verified (run before recording it in data.dvc)."""
    manifest = check_installed(cfg.data, cfg.paths.raw, pins)
    click.echo(f"{cfg.paths.raw}: {len(manifest['files'])} files verified against the pins")


@data.command("prepare")
@stage("prepare")
def prepare_cmd(cfg: Config) -> None:
    """Build the SFT/preference/RM/GRPO sets, proxy questions and eval manifests in paths.prepared.

    Upstream inputs (data.source fetch) must be the files `data fetch` verified; the synthetic world has its own path.
    """
    if cfg.data.source == "fetch":
        check_installed(cfg.data, raw_dir(cfg))
    summary = prepare(cfg, raw_dir(cfg), cfg.paths.prepared)
    for name, n in summary["rows"].items():
        click.echo(f"{cfg.paths.prepared}/{name}: {n} rows")
    for name, sha in summary["split_sha256"].items():
        click.echo(f"{name}: validation split sha256 {sha} (prepare.split_sha256 pins it)")
    dup = summary["duplicate_eval_rows"]
    if any(n for kind, n in dup.items() if kind != "rule"):
        counts = ", ".join(f"{kind} {n}" for kind, n in dup.items() if kind != "rule")
        done = "each kept (as run)" if dup["rule"] == "keep" else "dropped (first occurrence kept)"
        click.echo(f"duplicate eval rows ({counts}): {done}; prepare.duplicate_eval_rows sets the rule")


from sycorec.data.synth import synth_command  # noqa: E402  (registered here; the world lives in data/synth.py)

data.add_command(synth_command)
