"""Named random streams: a numpy generator per (seed, names...), the same in every process."""
from __future__ import annotations

import hashlib

import numpy as np


def rng(seed: int, *parts: object) -> np.random.Generator:
    """Returns a numpy generator seeded by `seed` and `parts`, the same in every process and platform."""
    # Python's hash() of a str changes per process; a digest does not.
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
