"""report stage family."""
