import click


@click.group()
def train() -> None:
    """Training stages: pretrain-tiny, sft, dpo, simpo, ipo, rm, grpo, relearn."""
