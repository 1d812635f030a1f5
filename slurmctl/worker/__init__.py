"""The worker: claims tasks, runs the handler per item, commits outputs under its lease."""
