"""The coordinator: validates the input, cuts batches and writes a job's initial state."""
