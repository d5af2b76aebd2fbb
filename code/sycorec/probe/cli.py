import click


@click.group()
def probe() -> None:
    """Linear probes: extract activations, analyze."""
