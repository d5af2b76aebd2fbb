"""cluster stage family."""
