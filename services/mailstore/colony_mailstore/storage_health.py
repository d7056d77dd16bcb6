"""Whether the shared storage takes writes: a full disk or a read-only mount holds delivery.

Theory of operation
-------------------
A delivery that fails because the file system refuses writes (``ENOSPC``, ``EDQUOT``,
``EROFS``, ``EIO``, ``ESTALE``, ``EACCES``/``EPERM`` on the share) is not the message's fault
and would succeed the moment space or the mount is back.  Retried on the queue's schedule it
was dead-lettered within seconds, after ``queue_max_deliver`` tries, so mail the edge had
acknowledged waited in ``DEAD_LETTERS`` for an operator's replay.  Postfix's local delivery
and Dovecot's LDA defer it instead (a temporary failure), and so does this:

* the first such failure marks the storage *down* (``failed``); every job that fails so, and
  every job the store gets while it is down, answers a held retry (``Retry(held=True)``:
  redelivered after ``HELD_DELAY``, never dead-lettered for it; see ``colony.queue.outcomes``);
* while it is down the store fetches no MAIL (``PartitionRunners.set_paused``), so the jobs
  wait in the stream rather than go round the store, and the open long polls bring few;
* every ``PROBE_EVERY`` seconds the upkeep probes: at least ``MIN_FREE`` bytes free
  (``statvfs``) and a small file written, fsynced and removed at the storage root.  Once the
  probe passes, fetching resumes and the held jobs are stored, each once (dedupe by key).

``HELD_DELAY`` is longer than a partition runner's long poll (5 s), so a job handed back
does not come straight round again through a poll opened before the store paused.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE, errno.EACCES,
                            errno.EPERM})
PROBE_EVERY = 5.0       # seconds between probes while the storage is down
HELD_DELAY = 10.0       # seconds before a held job is delivered again
MIN_FREE = 1 << 20      # bytes the file system must have free before delivery resumes
_PROBE_BYTES = 4096


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the file system refusing a write."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class StorageHealth:
    """Down since when and why; the probe that ends it (blocking: run it in a thread)."""

    def __init__(self, root: Path, node_id: str, clock=time.monotonic) -> None:
        self.root = Path(root)
        self.probe_path = self.root / f".colony-probe-{node_id}"
        self.clock = clock
        self.down_since: float | None = None
        self.reason = ""
        self.next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> bool:
        """Note a storage failure; True if this one took the storage down."""
        if self.down_since is not None:
            return False
        self.down_since = self.clock()
        self.reason = f"{type(exc).__name__}: {exc}"
        self.next_probe = self.down_since + PROBE_EVERY
        return True

    def probe_due(self) -> bool:
        return self.down_since is not None and self.clock() >= self.next_probe

    def probe(self) -> str | None:
        """None if the storage takes writes again, else why not (blocking file I/O)."""
        try:
            st = os.statvfs(self.root)
            free = st.f_bavail * st.f_frsize
            if free < MIN_FREE:
                return f"{free} bytes free, fewer than {MIN_FREE}"
            fd = os.open(self.probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, b"\0" * _PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(self.probe_path)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def probed(self, why_not: str | None) -> float | None:
        """Take a probe's answer; the seconds it was down when it is up again, else None."""
        if self.down_since is None:
            return None
        if why_not is not None:
            self.reason = why_not
            self.next_probe = self.clock() + PROBE_EVERY
            return None
        down_for = self.clock() - self.down_since
        self.down_since, self.reason = None, ""
        return down_for
