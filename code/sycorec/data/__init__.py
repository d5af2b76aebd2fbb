"""data stage family."""
