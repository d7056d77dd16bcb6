"""The event-sourced mailbox: reads, writes, replay, fencing and crash recovery (no sockets)."""

import os
from datetime import UTC, datetime

import pytest

from colony.storage import journal as j
from colony.storage import mailbox as mb
from colony.storage.mailbox import AccountMail, MailboxError


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now


def opened(tmp_path, epoch):
    acct = AccountMail(tmp_path, epoch, clock=Clock())
    acct.open()
    return acct


def snapshot_of(acct):
    return [(b.name, b.uidvalidity, b.uidnext, [(m.uid, sorted(m.flags), m.size, m.modseq, acct.body(b.name, m.uid))
                                                for m in acct.messages(b.name)])
            for b in acct.mailboxes()]


def test_new_account_has_default_mailboxes_with_special_use(tmp_path):
    acct = opened(tmp_path, 3)
    boxes = {b.name: b for b in acct.mailboxes()}
    assert list(boxes) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    assert boxes["Sent"].special_use == "\\Sent" and boxes["INBOX"].special_use is None
    assert all(b.subscribed and b.uidnext == 1 for b in boxes.values())
    assert len({b.uidvalidity for b in boxes.values()}) == 6


def test_append_flags_copy_move_expunge(tmp_path):
    acct = opened(tmp_path, 3)
    a = acct.append("inbox", b"Subject: one\r\n\r\nx\r\n", key="m1")
    b = acct.append("INBOX", b"Subject: two\r\n\r\ny\r\n", flags=["\\Flagged"], key="m2")
    acct.commit()
    assert (a.uid, b.uid, a.duplicate) == (1, 2, False)
    assert acct.append("INBOX", b"other bytes", key="m1") == mb.Stored(1, True)
    acct.store_flags("INBOX", [1, 2], ["\\Seen"], mode="add")
    acct.commit()
    msgs = acct.messages("INBOX")
    assert [sorted(m.flags) for m in msgs] == [["\\Seen"], ["\\Flagged", "\\Seen"]]
    assert msgs[0].modseq == msgs[1].modseq - 1 or msgs[0].modseq == msgs[1].modseq  # one or two records
    assert acct.highest_modseq >= max(m.modseq for m in msgs)
    assert acct.move("INBOX", [2], "Archive") == {2: 1}
    assert acct.copy("INBOX", [1], "Trash") == {1: 1}
    acct.commit()
    assert [m.uid for m in acct.messages("INBOX")] == [1]
    assert acct.body("Archive", 1).startswith(b"Subject: two")
    used = acct.bytes_used
    acct.store_flags("INBOX", [1], ["\\Deleted"], mode="add")
    assert acct.expunge("INBOX") == [1]
    acct.commit()
    assert acct.bytes_used == used - len(b"Subject: one\r\n\r\nx\r\n")
    assert acct.body("Trash", 1).startswith(b"Subject: one")  # the copy keeps the shared body


def test_mailbox_errors_are_mailbox_errors(tmp_path):
    acct = opened(tmp_path, 3)
    with pytest.raises(MailboxError):
        acct.append("Nope", b"x")
    with pytest.raises(MailboxError):
        acct.create_mailbox("Sent")
    with pytest.raises(MailboxError):
        acct.delete_mailbox("INBOX")
    acct.create_mailbox("Projects")
    acct.rename_mailbox("Projects", "Work")
    acct.commit()
    assert "Work" in {b.name for b in acct.mailboxes()}


def test_a_mailbox_created_again_never_gets_a_uidvalidity_used_before(tmp_path, monkeypatch):
    # RFC 3501 6.3.4 / RFC 9051 2.3.1.1: UIDs start again at 1 in the new incarnation, so its
    # UIDVALIDITY must be greater than the deleted one's: also within the same second, under a
    # clock that is behind, after a takeover, and from a snapshot that no longer holds the
    # deleted mailbox.
    monkeypatch.setattr(mb, "SNAPSHOT_EVERY", 3)
    seen = []
    for epoch in (3, 4, 5):
        clock = Clock()
        clock.now -= 3600 * epoch                            # each new owner's clock further behind
        acct = AccountMail(tmp_path, epoch, clock=clock)
        acct.open()
        for _ in range(2):                                   # twice within the same second
            acct.create_mailbox("Projects")
            acct.commit()
            assert acct.append("Projects", b"Subject: x\r\n\r\nx\r\n").uid == 1
            acct.commit()
            seen.append(next(b.uidvalidity for b in acct.mailboxes() if b.name == "Projects"))
            acct.delete_mailbox("Projects")
            acct.commit()
    assert seen == sorted(set(seen)), seen
    assert j.list_snapshots(tmp_path / "journal")
    restored = mb.MailState.from_json(acct.state.to_json())
    assert "Projects" not in restored.by_name and restored.uidvalidity_high == seen[-1]
    older = {k: v for k, v in acct.state.to_json().items() if k != "uidvalidity_high"}
    assert mb.MailState.from_json(older).uidvalidity_high == max(b.uidvalidity for b in acct.mailboxes())


def test_version_moves_with_every_change_the_owner_can_see(tmp_path):
    """``version`` is what IMAP's end-of-command sync compares to skip its walk: equal only
    if no message of the mailbox was added, expunged or had its flags changed."""
    acct = opened(tmp_path, 1)
    acct.create_mailbox("Work")
    acct.commit()
    v = acct.version("INBOX")
    work = acct.version("Work")
    assert acct.version("INBOX") == v and work != v
    acct.append("INBOX", b"Subject: a\r\n\r\nx\r\n")
    acct.commit()
    assert acct.version("INBOX") != v and acct.version("Work") == work   # per mailbox
    for change in (lambda: acct.store_flags("INBOX", [1], ["\\Flagged"], "add"),
                   lambda: acct.store_flags("INBOX", [1], ["$Work"], "add"),
                   lambda: acct.expunge("INBOX", [1])):
        v = acct.version("INBOX")
        change()
        acct.commit()
        assert acct.version("INBOX") != v
    # A colleague's own \Seen is not the owner's view: no change for the owner.
    acct.append("Work", b"Subject: b\r\n\r\ny\r\n")
    acct.commit()
    work = acct.version("Work")
    acct.store_seen("Work", "carol@example.com", [1], True)
    acct.commit()
    assert acct.version("Work") == work
    # Deleted and created again under the name: a new mailbox, never equal.
    acct.delete_mailbox("Work")
    acct.create_mailbox("Work")
    acct.commit()
    assert acct.version("Work") != work
    acct.delete_mailbox("Work")
    acct.commit()
    with pytest.raises(MailboxError):
        acct.version("Work")
    # Another handle on the same state (a reopen, a takeover) never compares equal either.
    v = acct.version("INBOX")
    acct.close()
    again = opened(tmp_path, 2)
    assert again.version("INBOX") != v


def test_listeners_see_committed_records(tmp_path):
    acct = opened(tmp_path, 3)
    seen = []
    acct.add_listener(seen.append)
    acct.append("INBOX", b"x")
    assert seen == []
    acct.commit()
    assert [type(r) for r in seen[0]] == [j.MessageAppended]


def test_takeover_replays_the_same_state(tmp_path):
    a = opened(tmp_path, 3)
    for i in range(5):
        a.append("INBOX", f"m{i}".encode(), key=f"k{i}")
    a.store_flags("INBOX", [2], ["\\Seen"])
    a.commit()
    before = snapshot_of(a)
    b = opened(tmp_path, 7)
    assert snapshot_of(b) == before
    assert b.append("INBOX", b"again", key="k3").duplicate  # dedupe survives the takeover
    assert b.append("INBOX", b"new").uid == 6
    b.commit()
    assert set(j.list_segments(tmp_path / "journal")) == {7}   # the predecessor's segment is superseded
    assert [m.uid for m in opened(tmp_path, 8).messages("INBOX")] == [1, 2, 3, 4, 5, 6]


def test_fenced_owner_cannot_commit_and_its_late_writes_are_not_replayed(tmp_path):
    old = opened(tmp_path, 5)
    old.append("INBOX", b"before takeover", key="a")
    old.commit()
    new = opened(tmp_path, 9)   # the old owner is paused past its lease meanwhile
    old.append("INBOX", b"late write", key="late")
    with pytest.raises(j.Fenced):
        old.commit()            # never acknowledged
    with pytest.raises(j.Fenced):
        old.append("INBOX", b"more")
    new.append("INBOX", b"by the new owner", key="b")
    new.commit()
    third = opened(tmp_path, 12)
    bodies = [third.body("INBOX", m.uid) for m in third.messages("INBOX")]
    assert bodies == [b"before takeover", b"by the new owner"]
    assert "late" not in third.state.dedupe


def test_same_tenure_reopens_its_own_segment_and_cuts_a_torn_tail(tmp_path):
    a = opened(tmp_path, 5)
    a.append("INBOX", b"one", key="1")
    a.commit()
    a.close()
    seg = tmp_path / "journal" / j.segment_name(5)
    with open(seg, "ab") as f:
        f.write(b"0000dead {\"t\":")   # a write that failed half-way
    again = opened(tmp_path, 5)
    assert again.append("INBOX", b"one", key="1").duplicate
    again.append("INBOX", b"two", key="2")
    again.commit()
    assert [m.uid for m in opened(tmp_path, 6).messages("INBOX")] == [1, 2]


def test_a_full_disk_leaves_no_part_of_a_body_and_the_retry_stores_it_once(tmp_path, monkeypatch):
    """ENOSPC half-way through a body, then in the commit of another: the partial body goes at
    once, the failed batch's bodies when the tenure's handle is reopened, and the retries
    store each message once, whole."""
    import errno
    acct = opened(tmp_path, 5)
    acct.append("INBOX", b"kept", key="k")
    acct.commit()
    real_write = os.write

    def full(fd, data):
        if len(data) > 4:        # the disk takes a few bytes of the body, then is full
            real_write(fd, bytes(data[:4]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        acct.append("INBOX", b"a large message", key="big")
    monkeypatch.undo()
    bodies = tmp_path / "bodies"
    assert len(list(bodies.iterdir())) == 1                  # only the committed one

    acct.append("INBOX", b"written, never committed", key="lost-commit")
    pending = acct.prepare_commit()
    pending.error = OSError(errno.ENOSPC, "No space left on device")   # the journal's write failed
    with pytest.raises(OSError):
        acct.finish_commit(pending)
    acct.close()
    assert len(list(bodies.iterdir())) == 2                  # its body is still there ...
    again = opened(tmp_path, 5)
    assert len(list(bodies.iterdir())) == 1                  # ... until the tenure reopens
    again.append("INBOX", b"a large message", key="big")
    again.append("INBOX", b"written, never committed", key="lost-commit")
    again.commit()
    inbox = opened(tmp_path, 6)
    assert [inbox.body("INBOX", m.uid) for m in inbox.messages("INBOX")] == [
        b"kept", b"a large message", b"written, never committed"]
    assert len(list(bodies.iterdir())) == 3


def test_old_epoch_cannot_open_over_a_newer_one(tmp_path):
    opened(tmp_path, 9)
    with pytest.raises(j.Fenced):
        opened(tmp_path, 5)


def test_torn_tail_is_ignored(tmp_path):
    a = opened(tmp_path, 5)
    a.append("INBOX", b"complete", key="a")
    a.commit()
    a.close()
    seg = tmp_path / "journal" / j.segment_name(5)
    rec = j.encode(j.MessageAppended(e=5, s=999, box=1, uid=2, body="5-x", date=datetime.now(UTC), size=3))
    with open(seg, "ab") as f:
        f.write(rec[: len(rec) // 2])   # crash mid-append
    b = opened(tmp_path, 6)
    assert [m.uid for m in b.messages("INBOX")] == [1]
    b.append("INBOX", b"next")
    b.commit()
    assert [m.uid for m in opened(tmp_path, 8).messages("INBOX")] == [1, 2]


def test_corrupt_record_ends_the_valid_prefix(tmp_path):
    a = opened(tmp_path, 5)
    a.append("INBOX", b"one")
    a.commit()
    a.append("INBOX", b"two")
    a.commit()
    a.close()
    seg = tmp_path / "journal" / j.segment_name(5)
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0x01   # flip a bit in the last record: its checksum no longer matches
    seg.write_bytes(bytes(data))
    assert [m.uid for m in opened(tmp_path, 6).messages("INBOX")] == [1]


def test_owner_that_died_while_taking_over_is_skipped(tmp_path):
    a = opened(tmp_path, 5)
    a.append("INBOX", b"kept")
    a.commit()
    j.write_atomically(tmp_path / "journal" / j.segment_name(7), j.encode(j.Claim(e=7, s=0)))  # claim, no seal
    a.append("INBOX", b"written after the claim, not acknowledged")
    with pytest.raises(j.Fenced):
        a.commit()
    b = opened(tmp_path, 8)
    assert len(b.messages("INBOX")) == 2   # stored, unacknowledged: a redelivery dedupes it


def test_snapshots_bound_replay_and_old_files_are_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "SNAPSHOT_EVERY", 10)
    a = opened(tmp_path, 5)
    for i in range(35):
        a.append("INBOX", b"m%d" % i, key=str(i))
        a.commit()
    a.store_flags("INBOX", [3], ["\\Seen"])
    a.expunge("INBOX", [4])
    a.commit()
    before = snapshot_of(a)
    assert len(j.list_snapshots(tmp_path / "journal")) <= 3
    b = opened(tmp_path, 6)
    assert snapshot_of(b) == before
    assert set(j.list_segments(tmp_path / "journal")) == {6}
    assert all(s[0] == 6 for s in j.list_snapshots(tmp_path / "journal"))
    assert len(os.listdir(tmp_path / "bodies")) == 34   # the expunged body is gone


def test_late_body_files_of_a_fenced_owner_are_collected(tmp_path):
    old = opened(tmp_path, 5)
    opened(tmp_path, 9)
    old.append("INBOX", b"late")
    with pytest.raises(j.Fenced):
        old.commit()
    opened(tmp_path, 10)
    assert os.listdir(tmp_path / "bodies") == []


def test_late_body_files_of_a_fenced_owner_go_when_the_owner_that_fenced_it_closes(tmp_path):
    """A fenced-off owner still writing a batch when the next one took over leaves its bodies
    after the take-over's sweep; they stayed on disk until the next take-over (seen as two
    body files of one message after a mail store was SIGKILLed mid-burst)."""
    old = opened(tmp_path, 5)
    new = opened(tmp_path, 9)
    new.append("INBOX", b"kept")
    new.commit()
    old.append("INBOX", b"late")
    with pytest.raises(j.Fenced):
        old.commit()
    assert len(os.listdir(tmp_path / "bodies")) == 2
    new.close()
    assert [n.split("-")[0] for n in os.listdir(tmp_path / "bodies")] == ["9"]
    # A sweep spares a newer owner's bodies: one that claims the account while we have it open.
    current = opened(tmp_path, 20)
    newer = opened(tmp_path, 25)
    newer.append("INBOX", b"in flight")       # written, not committed yet
    current.close()
    assert sorted(n.split("-")[0] for n in os.listdir(tmp_path / "bodies")) == ["25", "9"]
    newer.commit()
    assert [newer.body("INBOX", m.uid) for m in newer.messages("INBOX")] == [b"kept", b"in flight"]


def test_a_commit_makes_bodies_durable_before_the_records_that_name_them(tmp_path, monkeypatch):
    acct = opened(tmp_path, 3)
    calls = []
    real_fsync, real_write = os.fsync, os.write

    def what(fd):   # "bodies" or "journal" (a file in it), or "bodies/" (the directory itself)
        path = os.readlink(f"/proc/self/fd/{fd}")
        return path.rpartition("/")[2] + "/" if os.path.isdir(path) else path.rpartition("/")[0].rpartition("/")[2]

    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", what(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "write", lambda fd, b: (calls.append(("write", what(fd))), real_write(fd, b))[1])
    acct.append("INBOX", b"one")
    acct.append("INBOX", b"two")
    assert calls == [("write", "bodies"), ("write", "bodies")]   # written, not yet synced
    pending = acct.prepare_commit()
    with pytest.raises(j.Fenced):
        acct.append("INBOX", b"not while a commit is under way")
    calls.clear()
    pending.sync()
    assert calls == [("fsync", "bodies"), ("fsync", "bodies"), ("fsync", "bodies/"), ("write", "journal"),
                     ("fsync", "journal")]
    acct.finish_commit(pending)
    assert [acct.body("INBOX", m.uid) for m in acct.messages("INBOX")] == [b"one", b"two"]
    acct.append("INBOX", b"three")
    acct.commit()
    assert [acct.body("INBOX", m.uid) for m in opened(tmp_path, 4).messages("INBOX")] == [b"one", b"two", b"three"]


def test_a_commit_that_failed_or_was_fenced_during_its_sync_breaks_the_handle(tmp_path):
    acct = opened(tmp_path, 3)
    acct.append("INBOX", b"one")
    pending = acct.prepare_commit()
    with pytest.raises(MailboxError):
        acct.finish_commit(pending)          # never synced: nothing may be acknowledged
    with pytest.raises(j.Fenced):
        acct.append("INBOX", b"two")
    old = opened(tmp_path, 4)
    old.append("INBOX", b"late")
    pending = old.prepare_commit()
    opened(tmp_path, 5)                      # claims the account while the old owner syncs
    pending.sync()
    with pytest.raises(j.Fenced):
        old.finish_commit(pending)
    assert [m.uid for m in opened(tmp_path, 6).messages("INBOX")] == []


def test_an_append_of_many_messages_holds_a_bounded_number_of_descriptors(tmp_path, monkeypatch):
    from colony.storage import mailbox
    monkeypatch.setattr(mailbox, "MAX_OPEN_BODIES", 4, raising=False)
    acct = opened(tmp_path, 3)
    acct.append("INBOX", b"first")
    acct.commit()
    before = len(os.listdir("/proc/self/fd"))
    most = 0
    for i in range(20):            # one MULTIAPPEND: a commit after all of them
        acct.append("INBOX", b"m%d" % i)
        most = max(most, len(os.listdir("/proc/self/fd")) - before)
    assert most <= 5, f"{most} descriptors held for 20 bodies not yet committed"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    acct.commit()
    assert synced[-2:] == [True, False], "the bodies' directory, then the journal"
    assert len(os.listdir("/proc/self/fd")) - before <= 0
    assert [acct.body("INBOX", m.uid) for m in opened(tmp_path, 4).messages("INBOX")] == \
        [b"first"] + [b"m%d" % i for i in range(20)]
