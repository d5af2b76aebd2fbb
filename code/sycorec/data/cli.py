import click


@click.group()
def data() -> None:
    """Fetch, synthesize, validate and prepare datasets."""
