"""probe stage family."""
