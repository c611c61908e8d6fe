"""Which split an image belongs to: decided by its content hash alone.

An image never changes split when the dataset grows, and equal images always share a split.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def split_of(hash_hex: str, fractions: dict[str, float]) -> str:
    """The split an image belongs to, from its content hash alone (stable as data grows)."""
    point = int(hash_hex[:8], 16) / 0x1_0000_0000
    edge = 0.0
    for name in SPLITS:
        edge += float(fractions[name])
        if point < edge:
            return name
    return SPLITS[-1]


def splits_of(hashes: list[str], fractions: dict[str, float]) -> list[str]:
    """:func:`split_of` for many hashes at once (the same answers, a fraction of the time)."""
    if not hashes:
        return []
    lut = np.zeros(256, np.uint64)
    lut[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint64)
    lut[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
    digits = lut[np.frombuffer(np.array(hashes, dtype="S8").tobytes(), np.uint8).reshape(-1, 8)]
    points = (digits << (4 * np.arange(7, -1, -1, dtype=np.uint64))).sum(axis=1) / 0x1_0000_0000
    edges = np.cumsum([float(fractions[name]) for name in SPLITS])
    which = np.minimum(np.searchsorted(edges, points, side="right"), len(SPLITS) - 1)
    names = np.array(SPLITS)
    return list(names[which].tolist())
