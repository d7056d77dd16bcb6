"""Rendezvous (highest-random-weight) hashing.

Every caller that sees the same candidate set picks the same winner for a key, and when a
candidate joins or leaves only the keys it wins (or won) move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(key: str, candidate: str) -> int:
    """How much ``candidate`` wants ``key`` (and ``key`` it): the higher, the more preferred."""
    digest = hashlib.blake2b(f"{candidate}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, candidates: Iterable[str]) -> list[str]:
    """Candidates ordered from most to least preferred for ``key``."""
    return sorted(candidates, key=lambda c: (weight(key, c), c), reverse=True)


def choose(key: str, candidates: Iterable[str]) -> str | None:
    ranked = rank(key, candidates)
    return ranked[0] if ranked else None
