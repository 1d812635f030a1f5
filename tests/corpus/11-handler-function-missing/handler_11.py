"""Corpus handler: returns the item unchanged."""


def process(item, ctx):
    return item
