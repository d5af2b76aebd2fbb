import click


@click.command()
def prefetch() -> None:
    """Download every pinned model and dataset into the HF cache (login node)."""


@click.group()
def slurm() -> None:
    """Render and submit SLURM jobs."""
