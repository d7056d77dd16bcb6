"""Shared folders, sans-IO: alice shares a folder with bob; bob's session sees it in the Other
Users namespace (RFC 2342) through ``CompositeStore`` over ``SharedView`` of alice's mail,
and every command is held to the rights alice granted (RFC 4314)."""

from __future__ import annotations

import pytest

from colony.protocols.imap import shared
from colony.storage.mailbox import AccountMail

from test_session import MSG, Client, Store

ALICE, BOB, CAROL, EVE = "alice@example.com", "bob@example.com", "carol@example.com", "eve@other.test"
TEAM = "Other Users/alice@example.com/Team"


@pytest.fixture
def accounts(tmp_path):
    alice = AccountMail(tmp_path / "alice", 1, clock=lambda: 1_700_000_000.0)
    bob = AccountMail(tmp_path / "bob", 1, clock=lambda: 1_700_000_000.0)
    for m in (alice, bob):
        m.open()
    alice.create_mailbox("Team")
    alice.create_mailbox("Private")
    alice.append("Team", MSG)
    alice.append("Team", MSG, flags=["\\Seen"])
    alice.append("Private", MSG)
    alice.commit()
    yield alice, bob
    alice.close()
    bob.close()


def session(user: str, own: AccountMail, owners: dict[str, AccountMail]) -> Client:
    c = Client(own)
    c.store = shared.CompositeStore(Store(own), user, owners,
                                    lambda owner: shared.SharedView(Store(owners[owner]), owner, user))
    assert "a OK" in c.cmd(f"a LOGIN {user} secret")
    return c


def test_names_of_the_other_users_namespace():
    assert shared.shared_name("Alice@Example.com", "Team/Q1") == "Other Users/alice@example.com/Team/Q1"
    assert shared.split_shared("Other Users/alice@example.com/Team/Q1") == ("alice@example.com", "Team/Q1")
    assert shared.split_shared("Other Users/alice@example.com") is None
    assert shared.split_shared("Other Users/nobody/Team") is None
    assert shared.split_shared("Team") is None
    assert shared.is_namespace_node("Other Users") and shared.is_namespace_node("Other Users/alice@example.com")
    assert not shared.is_namespace_node(TEAM)


def test_nothing_shared_nothing_seen(accounts):
    alice, bob = accounts
    c = session(BOB, bob, {ALICE: alice})
    assert '* NAMESPACE (("" "/")) (("Other Users/" "/")) NIL' in c.cmd("n NAMESPACE")
    assert "Other Users" not in c.cmd('l LIST "" "*"')
    assert "s NO [NONEXISTENT]" in c.cmd(f's SELECT "{TEAM}"')
    assert "p NO [NONEXISTENT]" in c.cmd('p SELECT "Other Users/alice@example.com/Private"')


def test_grant_read_then_write_then_revoke(accounts):
    alice, bob = accounts
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lr")
    c = session(BOB, bob, {ALICE: alice})
    out = c.cmd('l LIST "" "*"')
    assert f'"{TEAM}"' in out and "Private" not in out
    assert '(\\Noselect \\HasChildren) "/" "Other Users"' in out           # the namespace levels
    assert '"Other Users/alice@example.com"' in out
    assert f'* LIST (\\HasNoChildren) "/" "{TEAM}"' in c.cmd('l2 LIST "" "Other Users/%/%"')
    assert f'* MYRIGHTS "{TEAM}" lr' in c.cmd(f'm MYRIGHTS "{TEAM}"')
    out = c.cmd(f'e EXAMINE "{TEAM}"')
    assert "* 2 EXISTS" in out and "e OK [READ-ONLY]" in out
    out = c.cmd(f's SELECT "{TEAM}"')
    assert "s OK [READ-ONLY]" in out                   # lr: nothing bob could change
    assert "Subject: Hello there" in c.cmd("f FETCH 1 BODY[HEADER]")
    assert "\\Seen" not in {f for m in alice.messages("Team") if m.uid == 1 for f in m.flags}
    assert "x NO [READ-ONLY]" in c.cmd("x STORE 1 +FLAGS (\\Flagged)")
    assert "k NO [NOPERM]" in c.cmd(f'k GETACL "{TEAM}"')
    assert "a NO [NOPERM]" in c.cmd(f'a APPEND "{TEAM}" {{5+}}\r\nhello')
    assert len(alice.messages("Team")) == 2                                  # no i: nothing appended

    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lrswi")
    out = c.cmd(f's SELECT "{TEAM}"')
    assert "s OK [READ-WRITE]" in out
    assert "t NO [NOPERM]" in c.cmd("t STORE 1 +FLAGS (\\Deleted)")         # no t
    assert "u OK" in c.cmd("u STORE 1 +FLAGS (\\Flagged \\Seen)")
    assert "\\Flagged" in alice.messages("Team")[0].flags                    # written in alice's journal
    assert "\\Seen" not in alice.messages("Team")[0].flags                   # bob's \Seen is his own
    assert alice.private_seen("Team", BOB).seen == {1}
    out = c.cmd("v SEARCH FLAGGED")
    assert "* SEARCH 1" in out
    msg = "Subject: from bob\r\n\r\nhi\r\n"
    out = c.cmd(f'w APPEND "{TEAM}" (\\Deleted) {{{len(msg)}+}}\r\n{msg}')
    assert "w OK [APPENDUID" in out
    assert alice.messages("Team")[-1].flags == frozenset()                  # \Deleted needs t
    assert "y NO [NOPERM]" in c.cmd("y EXPUNGE")

    assert "g OK" in owner.cmd(f"g DELETEACL Team {BOB}")
    assert "z NO [NONEXISTENT]" in c.cmd("z FETCH 1 FLAGS")                # revoked: gone at once
    assert TEAM not in c.cmd('l LIST "" "*"')


def test_copy_and_move_between_accounts(accounts):
    alice, bob = accounts
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lrswitei")
    bob.append("INBOX", MSG, flags=["\\Flagged"])
    bob.commit()
    c = session(BOB, bob, {ALICE: alice})
    assert "s OK" in c.cmd("s SELECT INBOX")
    out = c.cmd(f'c COPY 1 "{TEAM}"')
    assert "c OK [COPYUID" in out and len(alice.messages("Team")) == 3
    assert "\\Flagged" in alice.messages("Team")[-1].flags
    out = c.cmd(f's2 SELECT "{TEAM}"')
    assert "* 3 EXISTS" in out
    out = c.cmd("m MOVE 1 INBOX")                       # out of alice's folder into bob's INBOX
    assert "m OK" in out and "* 1 EXPUNGE" in out
    assert len(alice.messages("Team")) == 2 and len(bob.messages("INBOX")) == 2


def test_acl_commands_on_a_shared_folder_name_the_owner(accounts):
    alice, bob = accounts
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lra")
    c = session(BOB, bob, {ALICE: alice})
    out = c.cmd(f'a GETACL "{TEAM}"')
    assert f' {ALICE} lrswipkxteacd' in out and f' {BOB} lra' in out
    assert "b NO [CANNOT]" in c.cmd(f'b SETACL "{TEAM}" {ALICE} -a')        # the owner keeps every right
    assert "c NO [CANNOT]" in c.cmd(f'c SETACL "{TEAM}" {EVE} lr')         # never another tenant
    assert "d OK" in c.cmd(f'd SETACL "{TEAM}" carol@example.com lr')
    assert alice.acl("Team")["carol@example.com"] == "lr"


def test_creating_in_a_shared_folder_needs_k_and_never_top_level(accounts):
    alice, bob = accounts
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lr")
    c = session(BOB, bob, {ALICE: alice})
    assert "a NO [NOPERM]" in c.cmd(f'a CREATE "{TEAM}/Sub"')
    assert "b NO [NOPERM]" in c.cmd('b CREATE "Other Users/alice@example.com/Mine"')
    assert "c NO" in c.cmd('c CREATE "Other Users/Mine"')
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lrk")
    assert "d OK" in c.cmd(f'd CREATE "{TEAM}/Sub"')
    assert "Team/Sub" in [b.name for b in alice.mailboxes()]
    assert f'"{TEAM}/Sub"' in c.cmd('l LIST "" "*"')                  # its creator keeps access
    assert [b.name for b in bob.mailboxes() if b.name.startswith("Other")] == []


def test_a_colleagues_store_away_leaves_the_users_own_mail_working(accounts):
    alice, bob = accounts

    class Away:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise shared.SharedError("[UNAVAILABLE] The owner's mail store did not answer; try again")
            return fail

    c = Client(bob)
    c.store = shared.CompositeStore(Store(bob), BOB, [ALICE], lambda owner: Away())
    assert "a OK" in c.cmd(f"a LOGIN {BOB} secret")
    assert '"INBOX"' in c.cmd('l LIST "" "*"')
    assert "s OK" in c.cmd("s SELECT INBOX")
    assert "t NO [UNAVAILABLE]" in c.cmd(f't STATUS "{TEAM}" (MESSAGES)')


def flags_of(client: Client, seq: int) -> str:
    out = client.cmd(f"f FETCH {seq} FLAGS")
    return next(line for line in out.splitlines() if line.startswith(f"* {seq} FETCH"))


def test_seen_is_each_users_own_in_a_shared_folder(accounts, tmp_path):
    """RFC 4314 §4/§5.1.2: a colleague reading a shared folder marks it read for themself only."""
    alice, bob = accounts
    carol = AccountMail(tmp_path / "carol", 1, clock=lambda: 1_700_000_000.0)
    carol.open()
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lrswi")
    assert "h OK" in owner.cmd(f"h SETACL Team {CAROL} lrs")
    b = session(BOB, bob, {ALICE: alice})
    c = session(CAROL, carol, {ALICE: alice})
    assert "s OK" in owner.cmd("s SELECT Team")
    assert "s OK" in b.cmd(f's SELECT "{TEAM}"')
    assert "s OK" in c.cmd(f's SELECT "{TEAM}"')
    assert "\\Seen" in flags_of(owner, 2) and "\\Seen" not in flags_of(b, 2)   # alice read 2; bob did not

    assert "Hello there" in b.cmd("r FETCH 1 BODY[]")                  # bob reads 1: seen for him ...
    assert "\\Seen" in flags_of(b, 1)
    assert "\\Seen" not in flags_of(owner, 1) and "\\Seen" not in flags_of(c, 1)   # ... for nobody else
    assert "* 1 FETCH" not in owner.cmd("n NOOP")                       # nor an update to alice's session
    out = b.cmd("u SEARCH UNSEEN")
    assert "* SEARCH 2" in out and "* SEARCH 1" not in out

    assert "t OK" in owner.cmd("t STORE 1 +FLAGS (\\Seen)")           # alice reads 1 too; then bob unreads it
    assert "v OK" in b.cmd("v STORE 1 -FLAGS (\\Seen)")
    assert "\\Seen" in flags_of(owner, 1) and "\\Seen" not in flags_of(b, 1)
    assert "w OK" in b.cmd("w STORE 2 FLAGS (\\Flagged \\Seen)")     # a replace keeps alice's \Seen ...
    assert alice.messages("Team")[1].flags == frozenset({"\\Flagged", "\\Seen"})
    assert "x OK" in b.cmd("x STORE 2 FLAGS (\\Flagged)")              # ... whatever bob's becomes
    assert alice.messages("Team")[1].flags == frozenset({"\\Flagged", "\\Seen"})
    assert "\\Seen" not in flags_of(b, 2)

    msg = "Subject: from bob\r\n\r\nhi\r\n"                          # APPEND (\Seen): bob's own too
    assert "a OK" in b.cmd(f'a APPEND "{TEAM}" (\\Seen) {{{len(msg)}+}}\r\n{msg}')
    assert alice.messages("Team")[-1].flags == frozenset() and alice.private_seen("Team", BOB).seen == {3}
    carol.close()


def test_a_colleagues_seen_has_its_own_modseq(accounts):
    """CONDSTORE: bob's \\Seen change raises the MODSEQ bob sees, not alice's HIGHESTMODSEQ."""
    alice, bob = accounts
    owner = session(ALICE, alice, {})
    assert "g OK" in owner.cmd(f"g SETACL Team {BOB} lrs")
    b = session(BOB, bob, {ALICE: alice})
    mine = owner.cmd("a STATUS Team (HIGHESTMODSEQ)")
    out = b.cmd(f's SELECT "{TEAM}" (CONDSTORE)')
    before = int(out.split("[HIGHESTMODSEQ ")[1].split("]")[0])
    out = b.cmd("t STORE 1 +FLAGS (\\Seen)")
    modseq = int(out.split("MODSEQ (")[1].split(")")[0])
    assert modseq > before
    out = b.cmd(f"f FETCH 1:* (FLAGS) (CHANGEDSINCE {before})")
    assert "* 1 FETCH" in out and "* 2 FETCH" not in out
    assert f"[HIGHESTMODSEQ {modseq}]" in b.cmd(f's2 SELECT "{TEAM}" (CONDSTORE)')
    assert owner.cmd("a2 STATUS Team (HIGHESTMODSEQ)").splitlines()[0] == mine.splitlines()[0]
    assert "s OK" in owner.cmd("s SELECT Team (CONDSTORE)")
    assert "* 1 FETCH" not in owner.cmd(f"f FETCH 1:* (FLAGS) (CHANGEDSINCE {before})")


def test_private_seen_survives_a_snapshot_and_goes_with_an_expunge(accounts):
    from colony.storage.mailbox import MailState

    alice, _ = accounts
    alice.store_seen("Team", BOB, [1, 2], True)
    alice.copy("Team", [2], "Private")
    alice.commit()
    assert alice.private_seen("Private", BOB).seen == {2}                  # a copy keeps bob's \Seen
    again = MailState.from_json(alice.state.to_json())
    assert again.box("Team").private[BOB].seen == {1, 2}
    assert again.box("Team").private[BOB].modseq == alice.state.box("Team").private[BOB].modseq
    alice.expunge("Team", [1])
    alice.commit()
    assert alice.private_seen("Team", BOB).seen == {2} and 1 not in alice.private_seen("Team", BOB).modseq
