"""train stage family."""
