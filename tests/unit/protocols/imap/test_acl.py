"""ACL (RFC 4314): rights parsing and checking, the journal record, and the session commands."""

from __future__ import annotations

import pytest

from colony.protocols.imap import rights
from colony.storage.mailbox import AccountMail, read_state

from test_session import Client, logged_in, mail  # noqa: F401  (a fixture; pytest puts this directory on sys.path)


def test_rights_parse_modes_and_obsolete_letters():
    assert rights.parse("+lr") == ("+", frozenset("lr"))
    assert rights.parse("-w") == ("-", frozenset("w"))
    assert rights.parse("lrs") == ("=", frozenset("lrs"))
    assert rights.parse("c") == ("=", frozenset("kx"))     # RFC 2086 create
    assert rights.parse("d") == ("=", frozenset("te"))     # RFC 2086 delete
    with pytest.raises(rights.RightsError):
        rights.parse("lz")


def test_rights_apply_show_and_effective():
    assert rights.apply("", "srl") == "lrs"
    assert rights.apply("lrs", "+wi") == "lrswi"
    assert rights.apply("lrswi", "-sw") == "lri"
    assert rights.apply("lr", "") == ""
    assert rights.show("lrkt") == "lrktcd"
    assert rights.show("lr") == "lr"
    acl = {"bob@example.com": "lr", "anyone": "s"}
    owner = "alice@example.com"
    assert rights.effective(acl, "alice@example.com", owner) == rights.ALL
    assert rights.effective(acl, "Bob@example.com", owner) == "lrs"
    assert rights.effective(acl, "carol@example.com", owner) == "s"      # anyone of the domain
    assert rights.effective(acl, "bob@other.test", owner) == ""          # never another tenant


def test_identifiers_only_of_the_owners_domain():
    owner = "alice@example.com"
    assert rights.check_identifier("Bob@EXAMPLE.com", owner) == "bob@example.com"
    assert rights.check_identifier("ANYONE", owner) == "anyone"
    for bad in ("bob@other.test", "bob", "-bob@example.com", "@example.com", "", "x" * 300 + "@example.com"):
        with pytest.raises(rights.RightsError):
            rights.check_identifier(bad, owner)


def test_acl_records_replay_and_snapshot(tmp_path):
    m = AccountMail(tmp_path / "m", 1, clock=lambda: 1_700_000_000.0)
    m.open()
    m.create_mailbox("Team")
    m.set_acl("Team", "bob@example.com", "lrs")
    m.set_acl("Team", "anyone", "l")
    m.commit()
    m.set_acl("Team", "anyone", "")
    m.commit()
    assert read_state(tmp_path / "m").box("Team").acl == {"bob@example.com": "lrs"}
    m.snapshot()
    m.close()
    again = AccountMail(tmp_path / "m", 2, clock=lambda: 1_700_000_000.0)
    again.open()       # rebuilt from epoch 1's snapshot
    assert again.acl("Team") == {"bob@example.com": "lrs"}
    again.close()


def test_session_acl_commands(mail):  # noqa: F811
    c = logged_in(mail)   # bob@example.com owns the mailbox
    out = c.cmd("a1 MYRIGHTS INBOX")
    assert '* MYRIGHTS "INBOX" lrswipkxteacd' in out and "a1 OK" in out
    assert "a2 OK" in c.cmd("a2 SETACL Sent alice@example.com lr")
    assert "a3 OK" in c.cmd("a3 SETACL Sent alice@example.com +s")
    out = c.cmd("a4 GETACL Sent")
    assert '* ACL "Sent" bob@example.com lrswipkxteacd alice@example.com lrs\r\n' in out and "a4 OK" in out
    assert "a5 OK" in c.cmd("a5 SETACL Sent anyone c")
    assert ' anyone kxc\r\n' in c.cmd("a6 GETACL Sent")
    out = c.cmd("a7 LISTRIGHTS Sent alice@example.com")
    assert '* LISTRIGHTS "Sent" alice@example.com "" l r s w i p k x t e a c d' in out
    assert '* LISTRIGHTS "Sent" bob@example.com lrswipkxteacd' in c.cmd("a8 LISTRIGHTS Sent bob@example.com")
    assert "a9 OK" in c.cmd("a9 DELETEACL Sent anyone")
    assert "anyone" not in c.cmd("b1 GETACL Sent")
    # errors: another tenant, an unknown right, the owner, a missing mailbox
    assert "b2 NO [CANNOT]" in c.cmd("b2 SETACL Sent eve@other.test lr")
    assert "b3 BAD" in c.cmd("b3 SETACL Sent alice@example.com lrz")
    assert "b4 NO [CANNOT]" in c.cmd("b4 SETACL Sent bob@example.com -a")
    assert "b5 NO [CANNOT]" in c.cmd("b5 DELETEACL Sent bob@example.com")
    assert "b6 NO [NONEXISTENT]" in c.cmd("b6 GETACL Nowhere")
    assert ' alice@example.com lrs\r\n' in c.cmd("b7 GETACL Sent")


def test_acl_commands_need_login(mail):  # noqa: F811

    c = Client(mail)
    assert "a1 BAD" in c.cmd("a1 GETACL INBOX")


def test_acl_entries_per_mailbox_are_bounded(mail):  # noqa: F811
    c = logged_in(mail)
    for n in range(rights.MAX_ENTRIES):
        assert f"a{n} OK" in c.cmd(f"a{n} SETACL Drafts u{n}@example.com l")
    assert "b1 NO [LIMIT]" in c.cmd("b1 SETACL Drafts one-more@example.com l")
    assert "b2 OK" in c.cmd("b2 SETACL Drafts u1@example.com +r")      # changing an entry is fine


def test_acl_follows_rename_and_goes_with_delete(tmp_path):
    m = AccountMail(tmp_path / "m", 1, clock=lambda: 1_700_000_000.0)
    m.open()
    m.create_mailbox("Team")
    m.set_acl("Team", "bob@example.com", "lr")
    m.rename_mailbox("Team", "Crew")
    assert m.acl("Crew") == {"bob@example.com": "lr"}
    m.delete_mailbox("Crew")
    m.create_mailbox("Crew")
    m.commit()
    assert m.acl("Crew") == {}
    m.close()


def test_identifiers_and_rights_are_atoms_when_they_can_be_and_strings_otherwise():
    """RFC 4314 makes both astrings: an atom where the characters allow (what Dovecot and
    Cyrus send and imapclient's getacl reads), quoted or a literal where they do not."""
    from colony.protocols.imap.encode import astring

    assert astring("alice@example.com") == b"alice@example.com" and astring("lrs") == b"lrs"
    assert astring("x]y") == b"x]y"                               # "]" is an ASTRING-CHAR
    assert astring("") == b'""' and astring("a b") == b'"a b"' and astring('q"') == b'"q\\""'
    assert astring("a%b") == b'"a%b"' and astring("(x)") == b'"(x)"' and astring("{3}") == b'"{3}"'
    assert astring("j\u00fcrg@example.com") == b"{17}\r\nj\xc3\xbcrg@example.com"
