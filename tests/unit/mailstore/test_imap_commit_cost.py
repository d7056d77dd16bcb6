"""Where an IMAP command's commit runs: on the event loop while the store's commits have been
quick (a STORE then skips the hop to a worker thread), in a worker thread once they are slow
(a network file system), and on the loop again once they are quick again."""

from __future__ import annotations

from colony.protocols.imap import session as S
from colony.storage.mailbox import AccountMail
from colony_mailstore.imap_server import CommitCost, ImapServer, MailStore, MessageCache

MSG = b"From: a@example.com\r\nSubject: one\r\n\r\nbody one\r\n"


def test_the_median_of_recent_commits_decides_and_a_rare_slow_one_does_not():
    cost = CommitCost(limit=0.001, samples=5, probe_every=3)
    assert cost.on_loop()                       # nothing known yet: try the loop
    for seconds in (0.0001, 0.0001, 0.050, 0.0001):
        cost.timed(seconds)
    assert cost.on_loop()                       # one slow commit among quick ones
    for _ in range(3):
        cost.timed(0.004)
    assert not cost.on_loop()                   # most are slow now: threads
    cost.threaded()
    cost.threaded()
    assert not cost.on_loop()
    cost.threaded()
    assert cost.on_loop()                       # every third tries the loop again
    cost.timed(0.004)
    assert not cost.on_loop()                   # still slow
    for _ in range(3):
        cost.timed(0.0001)
    assert cost.on_loop()                       # quick again: back on the loop


def test_only_commits_of_something_on_the_loop_are_timed(tmp_path):
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    uid = mail.append("INBOX", MSG).uid
    mail.commit()
    cost = CommitCost(limit=0.001, samples=4, probe_every=2)
    store = MailStore(mail, S.RecentMarks(), None, MessageCache(), cost)
    store.on_loop = True
    store.commit()                              # nothing staged: says nothing about the disk
    assert len(cost._samples) == 0
    mail.store_flags("INBOX", [uid], ["\\Seen"], "add")
    store.commit()
    assert len(cost._samples) == 1 and "\\Seen" in mail.state.box("INBOX").messages[uid].flags
    threaded = MailStore(mail, S.RecentMarks(), None, MessageCache(), cost)
    mail.store_flags("INBOX", [uid], ["\\Seen"], "remove")
    threaded.commit()                           # in a worker thread: counted, not timed
    assert len(cost._samples) == 1 and cost._threaded == 1
    mail.close()
    reopened = AccountMail(tmp_path / "mail", 1)
    reopened.open()                             # both commits are in the journal
    assert reopened.state.box("INBOX").messages[uid].flags == frozenset()
    reopened.close()


def test_a_store_runs_on_the_loop_only_while_commits_are_quick(tmp_path):
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    mail.append("INBOX", MSG)
    mail.commit()
    server = ImapServer(None, None, "store-1", 60.0, lambda: True)
    server.commit_cost = CommitCost(limit=0.001, samples=2, probe_every=100)
    session = S.Session(lambda: 0.0, "test", account="bob@example.com")
    session.receive_data(b"a SELECT INBOX\r\n")
    while not isinstance(session.next_action(), S.NeedStore):
        pass
    own = MailStore(mail, S.RecentMarks(), None, MessageCache(), server.commit_cost)
    session.run(own)
    while session.next_action() is not None:
        pass
    session.receive_data(b"b STORE 1 +FLAGS (\\Flagged)\r\n")
    while not isinstance(session.next_action(), S.NeedStore):
        pass
    assert server._light(session, mail, [], own)           # quick so far: on the loop
    assert not server._light(session, mail, ["alice@example.com"], own)   # a colleague's folder: never
    server.commit_cost.timed(0.01)
    server.commit_cost.timed(0.01)
    assert not server._light(session, mail, [], own)       # slow commits: a worker thread
    mail.close()


def test_a_snapshot_a_commit_brings_due_is_never_written_on_the_loop(tmp_path, monkeypatch):
    import colony.storage.mailbox as mailbox
    monkeypatch.setattr(mailbox, "SNAPSHOT_EVERY", 2)
    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    uid = mail.append("INBOX", MSG).uid
    mail.commit()
    def snapshots():
        return sorted(p.name for p in mail.journal_dir.glob("snap-*"))
    before = snapshots()
    store = MailStore(mail, S.RecentMarks(), None, MessageCache(), CommitCost())
    store.on_loop = True
    for flag in ("\\Seen", "\\Flagged"):
        mail.store_flags("INBOX", [uid], [flag], "add")
        store.commit()
    assert mail.snapshot_due and snapshots() == before     # the shell writes it, from a thread
    threaded = MailStore(mail, S.RecentMarks(), None, MessageCache(), CommitCost())
    mail.store_flags("INBOX", [uid], ["\\Answered"], "add")
    threaded.commit()                           # in a worker thread: written at once
    assert not mail.snapshot_due and snapshots()[-1] > before[-1]
    mail.close()
