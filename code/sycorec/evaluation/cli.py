import click


@click.group()
def generate() -> None:
    """Generate model responses for the eval sets."""


@click.group()
def judge() -> None:
    """Judge generations (LLM judge or rule judge)."""


@click.group()
def score() -> None:
    """Compute behavioural metrics with bootstrap CIs."""


@click.command()
def compare() -> None:
    """Per-metric deltas between two models."""
