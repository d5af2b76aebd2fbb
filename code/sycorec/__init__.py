"""sycorec: a reproducible, DVC-driven rebuild of the sycophancy-recovery study."""

__version__ = "0.1.0"
