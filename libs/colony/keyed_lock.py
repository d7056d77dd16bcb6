"""One ``asyncio.Lock`` per key, forgotten once nobody holds or waits for it.

Why not ``locks.setdefault(key, asyncio.Lock())`` and dropping the lock when ``not
lock.locked()``: ``Lock.release()`` clears ``locked()`` before the first waiter has run, so the
releasing task would drop a lock a waiter is about to take; a third task then makes a fresh
lock for the same key and enters while the woken waiter enters too -- two holders at once.
Here the entry lives while anyone holds *or waits for* it (a count, cancellation included),
so every task of one key meets the same lock, and memory stays bounded by the keys in use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class KeyedLock:
    def __init__(self) -> None:
        self._entries: dict[Hashable, list] = {}  # key -> [lock, holders and waiters]

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._entries[key]

    def __len__(self) -> int:
        """Keys with a holder or a waiter now."""
        return len(self._entries)
