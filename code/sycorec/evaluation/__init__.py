"""evaluation stage family."""
