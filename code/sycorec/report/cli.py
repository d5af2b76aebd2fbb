import click


@click.group()
def report() -> None:
    """Tables, figures, errata, published diff, manifest."""
