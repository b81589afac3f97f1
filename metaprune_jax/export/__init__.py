"""Compression you can ship: compact (physically smaller) exports of pruned models, int8 weights, packing."""
