"""Copying an account's mail to another copy of it (colony.storage.transfer): two real
journals on disk, the source read without claiming it, as the domain move's passes do."""

from __future__ import annotations

from colony.storage import transfer as tr
from colony.storage.mailbox import AccountMail, read_state


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def opened(path, epoch=1):
    acct = AccountMail(path, epoch, clock=Clock())
    acct.open()
    return acct


def source_body(path):
    return lambda name: (path / "bodies" / name).read_bytes()


def contents(acct):
    return sorted((b.name, acct.body(b.name, m.uid), tuple(sorted(m.flags)))
                  for b in acct.mailboxes() for m in acct.messages(b.name))


def verified(source_dir, target):
    state = read_state(source_dir)
    return tr.source_digest(state, source_body(source_dir)) == tr.target_digest(target, tr.source_keys(state))


def test_two_passes_copy_everything_once_and_follow_what_users_did_in_between(tmp_path):
    src_dir, dst_dir = tmp_path / "eu", tmp_path / "us"
    src = opened(src_dir)
    src.append("INBOX", b"one", key="<1@x>/a@acme.example")
    src.append("INBOX", b"two", ["\\Seen"], key="<2@x>/a@acme.example")
    src.create_mailbox("Projects/2026")
    src.append("Projects/2026", b"appended by IMAP")  # no delivery key
    src.copy("INBOX", [1], "Archive")                  # a copy has no key either
    src.set_acl("Projects/2026", "b@acme.example", "lr")
    src.subscribe("Projects/2026")
    src.commit()

    dst = opened(dst_dir)
    dst.append("INBOX", b"routed during the move", key="<9@x>/a@acme.example")  # arrived in the target directly
    dst.commit()

    first = tr.merge(dst, read_state(src_dir), source_body(src_dir), batch=2)
    assert (first.appended, first.expunged) == (4, 0) and first.mailboxes_created == 1
    assert verified(src_dir, dst)
    assert dst.acl("Projects/2026") == {"b@acme.example": "lr"} and "Projects/2026" in dst.state.subscribed

    # users keep working in the source until the seal
    src.store_flags("INBOX", [1], ["\\Answered"], "add")
    src.expunge("Archive", [1])
    src.append("INBOX", b"three", key="<3@x>/a@acme.example")
    src.rename_mailbox("Projects/2026", "Projects/2027")
    src.commit()
    assert not verified(src_dir, dst)

    second = tr.merge(dst, read_state(src_dir), source_body(src_dir))
    # the renamed folder's message is copied under its new name and the old folder goes
    assert (second.appended, second.flags_changed, second.expunged) == (2, 1, 2)
    assert (second.mailboxes_created, second.mailboxes_deleted) == (1, 1)
    assert "Projects/2026" not in {b.name for b in dst.mailboxes()}
    assert verified(src_dir, dst)
    assert contents(dst) == sorted(contents(src) + [("INBOX", b"routed during the move", ())])

    again = tr.merge(dst, read_state(src_dir), source_body(src_dir))  # a repeated pass does nothing
    assert (again.appended, again.flags_changed, again.expunged, again.mailboxes_created,
            again.mailboxes_deleted) == (0, 0, 0, 0, 0)


def test_a_redelivery_is_stored_once_whichever_side_got_it_first(tmp_path):
    src_dir, dst_dir = tmp_path / "eu", tmp_path / "us"
    src = opened(src_dir)
    src.append("INBOX", b"early", key="<1@x>/a@acme.example")
    src.append("INBOX", b"late", key="<2@x>/a@acme.example")
    src.commit()
    dst = opened(dst_dir)
    # <2> was redelivered through routing before the copy ran ...
    assert not dst.append("INBOX", b"late", key="<2@x>/a@acme.example").duplicate
    dst.commit()
    tr.merge(dst, read_state(src_dir), source_body(src_dir))
    # ... and <1> is redelivered after it: both are already there
    assert dst.append("INBOX", b"early", key="<1@x>/a@acme.example").duplicate
    assert sorted(acct_body for _, acct_body, _ in contents(dst)) == [b"early", b"late"]
    assert verified(src_dir, dst)


def test_a_body_that_differs_is_not_verified(tmp_path):
    src_dir, dst_dir = tmp_path / "eu", tmp_path / "us"
    src = opened(src_dir)
    src.append("INBOX", b"original", key="<1@x>/a@acme.example")
    src.commit()
    dst = opened(dst_dir)
    tr.merge(dst, read_state(src_dir), source_body(src_dir))
    assert verified(src_dir, dst)
    for body in (dst_dir / "bodies").iterdir():
        body.write_bytes(b"damaged")
    assert not verified(src_dir, dst)


def test_moving_on_keeps_the_identity_of_what_an_earlier_move_copied(tmp_path):
    eu, us, ap = tmp_path / "eu", tmp_path / "us", tmp_path / "ap"
    src = opened(eu)
    src.append("INBOX", b"kept", key="<1@x>/a@acme.example")
    src.append("Sent", b"sent")
    src.commit()
    mid = opened(us)
    tr.merge(mid, read_state(eu), source_body(eu))
    mid.append("INBOX", b"routed", key="<2@x>/a@acme.example")
    mid.commit()
    last = opened(ap)
    tr.merge(last, read_state(us), source_body(us))
    assert verified(us, last)
    keys = sorted(m.key for b in last.mailboxes() for m in last.messages(b.name))
    assert keys == ["move:<1@x>/a@acme.example", "move:<2@x>/a@acme.example", "move:Sent/" +
                    str(src.state.box("Sent").uidvalidity) + "/1"]


def private_seen(acct):
    return {(b.name, acct.body(b.name, uid), user)
            for b in acct.state.boxes.values() for user, p in b.private.items() for uid in p.seen}


def test_colleagues_own_seen_is_carried_and_follows_the_source_once(tmp_path):
    """A colleague's \\Seen in a shared folder is a seen record in the owner's journal: the
    merge carries it to the copy of each message, a repeat writes nothing, a change in the
    source between passes (set or cleared) follows, and a routed delivery the source lacks
    keeps what a colleague set on it in the target."""
    src_dir, dst_dir = tmp_path / "eu", tmp_path / "us"
    src = opened(src_dir)
    src.create_mailbox("Team")
    for i in range(3):
        src.append("Team", f"team {i}".encode(), key=f"<t{i}@x>/a@acme.example")
    src.append("INBOX", b"inbox", key="<i@x>/a@acme.example")
    src.set_acl("Team", "b@acme.example", "lrs")
    src.store_seen("Team", "b@acme.example", [1, 2], True)
    src.store_seen("Team", "c@acme.example", [3], True)
    src.store_seen("INBOX", "b@acme.example", [1], True)
    src.commit()
    dst = opened(dst_dir)
    dst.append("INBOX", b"routed", key="<r@x>/a@acme.example")
    dst.commit()
    dst.store_seen("INBOX", "c@acme.example", [1], True)
    dst.commit()

    first = tr.merge(dst, read_state(src_dir), source_body(src_dir), batch=2)
    assert first.seen_changed == 3
    assert private_seen(dst) == private_seen(src) | {("INBOX", b"routed", "c@acme.example")}
    assert verified(src_dir, dst)
    assert tr.merge(dst, read_state(src_dir), source_body(src_dir)).seen_changed == 0

    src.store_seen("Team", "b@acme.example", [2], False)
    src.store_seen("Team", "c@acme.example", [1], True)
    src.commit()
    again = tr.merge(dst, read_state(src_dir), source_body(src_dir))
    assert again.seen_changed == 2 and (again.appended, again.flags_changed) == (0, 0)
    assert private_seen(dst) == private_seen(src) | {("INBOX", b"routed", "c@acme.example")}

    # replayed from the journal alone (a store restarted, or the next owner), the same
    dst.close()
    assert private_seen(opened(dst_dir, epoch=2)) == private_seen(src) | {("INBOX", b"routed", "c@acme.example")}
