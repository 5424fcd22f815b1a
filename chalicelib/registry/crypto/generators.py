"""The Bulletproofs vector generators, built exactly as the Rust ``bulletproofs`` crate builds them.

Each party ``j`` of an aggregated proof gets its own two chains of generators, ``G_j`` and
``H_j``. A chain is SHAKE256 over ``b"GeneratorsChain" || label`` read as an endless stream,
each 64-byte block mapped to a point with Ristretto's from-uniform-bytes map. The label is one
ASCII letter (``G`` or ``H``) followed by the party index as a little-endian u32.

Because a chain is a stream, the first ``n`` generators do not depend on the capacity asked
for: ``BulletproofGens(64, 8)`` and ``BulletproofGens(32, 1)`` agree on party 0's first 32
generators. That is why our proofs verify under whatever capacity the registry configured.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

from .ristretto import Point


def generators_chain(label: bytes, count: int) -> list[Point]:
    """The first ``count`` points of the chain named by ``label``."""
    stream = hashlib.shake_256(b"GeneratorsChain" + label).digest(64 * count)
    return [Point.from_uniform_bytes(stream[64 * i : 64 * (i + 1)]) for i in range(count)]


class BulletproofGens:
    """Generators for up to ``party_capacity`` parties proving up to ``gens_capacity`` bits."""

    def __init__(self, gens_capacity: int, party_capacity: int) -> None:
        if gens_capacity < 1 or party_capacity < 1:
            raise ValueError("capacities must be positive")
        self.gens_capacity = gens_capacity
        self.party_capacity = party_capacity
        self._G: list[list[Point]] = []
        self._H: list[list[Point]] = []
        for party in range(party_capacity):
            index = struct.pack("<I", party)
            self._G.append(generators_chain(b"G" + index, gens_capacity))
            self._H.append(generators_chain(b"H" + index, gens_capacity))

    def share_G(self, j: int, n: int) -> list[Point]:
        """Party ``j``'s first ``n`` G generators."""
        return self._G[j][:n]

    def share_H(self, j: int, n: int) -> list[Point]:
        return self._H[j][:n]

    def G(self, n: int, m: int) -> list[Point]:
        """The aggregated G vector: party 0's first n, then party 1's first n, ..."""
        return [g for j in range(m) for g in self._G[j][:n]]

    def H(self, n: int, m: int) -> list[Point]:
        return [h for j in range(m) for h in self._H[j][:n]]


@lru_cache(maxsize=1)
def default_bulletproof_gens() -> BulletproofGens:
    """Shared generators for every supported size: 64 bits, 8 parties (built once, ~30 ms)."""
    return BulletproofGens(64, 8)
