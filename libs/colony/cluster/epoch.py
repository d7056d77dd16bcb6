"""Fencing epochs on the receiving side.

A receiver remembers the highest controller epoch it has seen, from commands and from
watching the lease bucket, and refuses any command stamped with an older one: a deposed
controller that wakes up from a pause cannot countermand its successor.
"""

from __future__ import annotations


class StaleEpoch(Exception):
    def __init__(self, got: int, current: int) -> None:
        super().__init__(f"command epoch {got} is older than the current controller epoch {current}")
        self.got, self.current = got, current


class EpochGuard:
    def __init__(self) -> None:
        self.highest = 0

    def observe(self, epoch: int) -> None:
        self.highest = max(self.highest, epoch)

    def admit(self, epoch: int) -> None:
        """Accept a command of ``epoch`` or raise StaleEpoch."""
        if epoch <= 0:
            raise StaleEpoch(epoch, self.highest)
        if epoch < self.highest:
            raise StaleEpoch(epoch, self.highest)
        self.highest = epoch
