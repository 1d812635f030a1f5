"""Corpus handler: returns the item unchanged."""

from typing import Any


def process(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return item
