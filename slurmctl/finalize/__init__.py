"""Finalize: reconcile, then plan a retry phase or aggregate the committed outputs."""
