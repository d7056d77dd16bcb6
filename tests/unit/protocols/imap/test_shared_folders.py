"""Shared folders, sans-IO: alice shares a folder with bob; bob's session sees it in the Other
Users namespace (RFC 2342) through ``CompositeStore`` over ``SharedView`` of alice's mail,
and every command is held to the rights alice granted (RFC 4314)."""

from __future__ import annotations

import pytest

from colony.protocols.imap import shared
from colony.storage.mailbox import AccountMail

from test_session import MSG, Client, Store

ALICE, BOB, EVE = "alice@example.com", "bob@example.com", "eve@other.test"
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
    assert f'* LIST (\\HasNoChildren) "/" "{TEAM}"' in c.cmd(f'l2 LIST "" "Other Users/%/%"')
    assert f'* MYRIGHTS "{TEAM}" "lr"' in c.cmd(f'm MYRIGHTS "{TEAM}"')
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
    assert {"\\Flagged", "\\Seen"} <= alice.messages("Team")[0].flags        # written in alice's journal
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
    assert f'"{ALICE}" "lrswipkxteacd"' in out and f'"{BOB}" "lra"' in out
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
