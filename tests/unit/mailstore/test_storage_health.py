"""storage_health: which failures hold delivery, and the probe that ends the hold (no sockets)."""

import errno
import os

from colony_mailstore import storage_health as sh
from colony_mailstore.storage_health import StorageHealth, storage_failure


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_or_read_only_file_system_is_a_storage_failure_and_a_bug_is_not():
    assert storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert storage_failure(OSError(errno.EROFS, "Read-only file system"))
    assert storage_failure(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:   # wrapped by whatever caught it on the way
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("commit failed") from exc
    except RuntimeError as wrapped:
        assert storage_failure(wrapped)
    assert not storage_failure(OSError(errno.ENOENT, "No such file or directory"))
    assert not storage_failure(ValueError("bad record"))


def test_down_on_the_first_failure_probed_on_a_schedule_up_when_the_probe_passes(tmp_path):
    clock = Clock()
    health = StorageHealth(tmp_path, "mailstore-1", clock)
    assert not health.down and not health.probe_due()
    assert health.failed(OSError(errno.ENOSPC, "No space left on device"))
    assert not health.failed(OSError(errno.ENOSPC, "again"))     # one outage, one "went down"
    assert health.down and "No space" in health.reason
    assert not health.probe_due()
    clock.now += sh.PROBE_EVERY
    assert health.probe_due()
    assert health.probed("12 bytes free") is None and health.down    # still full: probe later
    assert not health.probe_due() and health.reason == "12 bytes free"
    clock.now += sh.PROBE_EVERY
    assert health.probe() is None                                   # tmp_path takes writes
    assert not os.path.exists(health.probe_path)                    # the probe leaves nothing
    assert health.probed(None) == 2 * sh.PROBE_EVERY
    assert not health.down and not health.probe_due()


def test_the_probe_fails_on_too_little_free_space(tmp_path, monkeypatch):
    health = StorageHealth(tmp_path, "mailstore-1")

    class Full:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    assert "40960 bytes free" in health.probe()
