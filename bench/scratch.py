"""Where a benchmark's data goes on this VM's disk, and what creating a file there costs.

Why: the VM's root file system is ext4 *without a journal* (``/proc/fs/jbd2`` lists no
device).  There, ext4's inode allocator skips every inode of the block group freed in the
last 60 s (360 s while its inode table block is still dirty: ``recently_deleted()`` in
``fs/ext4/ialloc.c``, checked only when there is no journal), one buffer-cache look-up each,
scanning from the start of the group for every new file.  Every helper's tests and
benchmarks create and delete their files under ``/tmp``, in the same few block groups, so a
1 KiB create there cost 370-530 us of CPU (2026-11-26 12:32, ``bench/README.md``, Inbound
SMTP) against 22 us in a group nobody had freed files in -- and a mail store creates one
body file per message.  Which run of a series lands after a burst of deletions is chance:
perf put 6 % of one store's CPU in ``__ext4_new_inode`` and 28 % of three stores' in the
next run: about as much as the whole growth the scale-out goal is about.

``spread_out(directory)`` sets ext4's ``T`` attribute (``chattr +T``, "top of a directory
hierarchy") on a fresh scratch directory: each directory made in it is then placed by the
Orlov allocator like a top-level one -- from a group chosen by a hash of its *name*, the
first with more free inodes and blocks than average -- instead of beside its parent in
``/tmp``'s churned groups.  Files follow their directory's group.  Because the start is the
name's hash, a run's directory needs a name of its own (``unique_name``): under a fixed name
a run landed in the group where the run before had just deleted its files (393 us per
create, 12:33).  Even with names of their own, 1 of 8 runs landed in such a group (a group
just emptied has more free inodes than average: the kind Orlov looks for), so
``quiet_directory`` measures a create where it landed and, if it is dear, makes another.
On a file system without the attribute (tmpfs, NFS) ``spread_out`` does nothing.
``create_cost_us(directory)`` measures the cost where a run's data is, so a table can show it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path


def spread_out(directory: Path) -> bool:
    """Mark ``directory`` so that directories made in it are spread over the disk's groups
    (ext4's Orlov allocator); False where the attribute is not supported."""
    try:
        return subprocess.run(["chattr", "+T", str(directory)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def unique_name(prefix: str) -> str:
    """A directory name no earlier run used: its hash places it in a group of its own."""
    return f"{prefix}-{secrets.token_hex(4)}"


def quiet_directory(parent: Path, prefix: str, *, cheap_us: float = 60.0, tries: int = 8) -> tuple[Path, float]:
    """A new directory in ``parent`` (``spread_out`` first) where a 1 KiB file costs at most
    ``cheap_us`` to create, or the cheapest of ``tries``; and that cost.  The directories
    passed over stay, empty but for the probe (removing them would free inodes nearby)."""
    best: tuple[Path, float] | None = None
    for _ in range(tries):
        directory = Path(parent) / unique_name(prefix)
        directory.mkdir()
        cost = create_cost_us(directory)
        if best is None or cost < best[1]:
            best = (directory, cost)
        if cost <= cheap_us:
            break
    assert best is not None
    return best


def create_cost_us(directory: Path, files: int = 200) -> float:
    """CPU microseconds per 1 KiB file created, written and closed in a fresh directory under
    ``directory`` (no fsync): the cost of a new inode where the benchmark's data lands.  The
    files stay (deleting them would make the next creates there dearer)."""
    probe = Path(directory) / f"create-probe-{os.getpid()}-{time.monotonic_ns()}"
    probe.mkdir(parents=True)
    block = b"x" * 1024
    t0 = time.process_time()
    for i in range(files):
        fd = os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, block)
        finally:
            os.close(fd)
    return (time.process_time() - t0) / files * 1e6
