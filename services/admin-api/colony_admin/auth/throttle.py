"""Brute-force protection: count failures per key (client address, account) in a
sliding window and refuse checks for a while once a key has too many.  A key locked again
within ``max_lockout`` of its last lock's end is locked twice as long as the time before, up
to ``max_lockout`` (as fail2ban's ``bantime.increment``): with a fixed lock a patient guesser
kept ``max_failures`` guesses a ``window + lockout`` for ever (14,400 a day at the defaults);
escalated, about ``max_failures`` an hour.

Pure: the caller passes the monotonic time, so tests advance a number instead of sleeping.
Per instance: an attacker spread over N admin-api instances gets N times the budget, which
still caps guessing at a few attempts per second against 2^256-secret tokens and argon2.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Throttle:
    max_failures: int = 10
    window: float = 60.0
    lockout: float = 60.0
    max_lockout: float = 3600.0
    max_keys: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    # key -> (locks in a row, end of the last one); in the order of the last lock
    _strikes: dict[str, tuple[int, float]] = field(default_factory=dict)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        until = self._locked_until.get(key)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked_until[key]
            return 0.0
        return until - now

    def failed(self, key: str, now: float) -> None:
        failures = self._failures
        # Kept in the order of each key's last failure (moved to the end on each one): the
        # first keys' windows are over first, so they go as soon as they are -- a spray from
        # many addresses leaves the last window's keys, not max_keys of them (a deque each,
        # ~700 B) for as long as the instance runs.  Locks are dropped likewise.
        while failures and next(iter(failures.values()))[-1] <= now - self.window:
            del failures[next(iter(failures))]
        while self._locked_until and next(iter(self._locked_until.values())) <= now:
            del self._locked_until[next(iter(self._locked_until))]
        if len(failures) >= self.max_keys:
            self._forget_oldest(now)
        q = failures.pop(key, None) or deque()
        failures[key] = q
        q.append(now)
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.max_failures:
            if len(self._locked_until) >= self.max_keys:
                self._forget_expired_locks(now)
            # Moved to the end: a key locked again (checks that passed before its lock, failing
            # after it) kept its first place and was the first dropped, as if the oldest.
            self._locked_until.pop(key, None)
            self._locked_until[key] = now + self._lock_length(key, now)
            del failures[key]   # counted afresh after the lock (never an empty deque kept)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._strikes.pop(key, None)

    def _lock_length(self, key: str, now: float) -> float:
        strikes = self._strikes
        while strikes and next(iter(strikes.values()))[1] + self.max_lockout <= now:
            del strikes[next(iter(strikes))]      # forgiven: a max_lockout without a lock
        if len(strikes) >= self.max_keys:
            strikes.pop(next(iter(strikes)))
        earlier = strikes.pop(key, None)
        count = earlier[0] + 1 if earlier is not None else 0
        length = min(self.lockout * 2 ** min(count, 32), max(self.lockout, self.max_lockout))
        strikes[key] = (count, now + length)
        return length

    def _forget_expired_locks(self, now: float) -> None:
        # A lock was forgotten only when its own key came back after it expired: from many
        # addresses (an IPv6 prefix holds 2^64) locks piled up without end.  Drop the expired
        # ones, then the oldest (locks are added in time order, all of the same length).
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]
        while len(self._locked_until) >= self.max_keys:
            self._locked_until.pop(next(iter(self._locked_until)))

    def _forget_oldest(self, now: float) -> None:
        # Bounded memory under a spray of random keys: drop expired entries, then the oldest.
        for key in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) >= self.max_keys:
            self._failures.pop(next(iter(self._failures)))
