"""Seeds derived from a run's seed and a name, so a random draw depends on what it is for, not on
how many draws came before it (nor on which rank or in which piece of the model it happens)."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for ``name`` (a module's qualified name, a micro-batch) in a run seeded ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def stream_seed(seed: int, i: int) -> int:
    """The seed of draw ``i`` (an epoch, an item) of a stream seeded ``seed``: ``seed·1000003 + i``
    within a generator's 63 bits (any run seed in [0, 2**63) is valid)."""
    return (seed * 1_000_003 + i) % 2**63
