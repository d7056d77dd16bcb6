"""RFC 4314 §4 (and RFC 6851 §4.3): which command needs which right, as the sans-IO session
applies them to a store that grants the user less than everything (a colleague's shared
folder).  The store here is the user's own journal with a rights table in front of it."""

from __future__ import annotations

import pytest

from colony.protocols.imap import rights
from colony.storage.mailbox import AccountMail

from test_session import Client, Store, mail  # noqa: F401  (a fixture; pytest puts this directory on sys.path)


# --- the pure rules ---------------------------------------------------------------------------

def test_flags_need_s_t_or_w():
    assert rights.flag_right("\\Seen") == "s" and rights.flag_right("\\SEEN") == "s"
    assert rights.flag_right("\\Deleted") == "t"
    for flag in ("\\Flagged", "\\Answered", "\\Draft", "$Forwarded", "\\*"):
        assert rights.flag_right(flag) == "w"
    assert rights.refused_flags("lrs", ["\\Seen", "\\Flagged", "\\Deleted"]) == ["\\Flagged", "\\Deleted"]
    assert rights.refused_flags("lrswt", ["\\Seen", "\\Flagged", "\\Deleted"]) == []
    assert rights.settable_flags("lri", ["\\Seen", "$Work"]) == []
    assert rights.settable_flags("lris", ["\\Seen", "$Work"]) == ["\\Seen"]


def test_a_refusal_hides_what_the_user_cannot_look_up():
    assert rights.refusal("lr", "r") is None
    assert rights.refusal(rights.ALL, "te") is None
    assert rights.refusal("", "r").startswith("[NONEXISTENT]")
    assert rights.refusal("r", "i").startswith("[NONEXISTENT]")        # no l: not even a hint
    assert rights.refusal("l", "r").startswith("[NOPERM]")
    assert "te" in rights.refusal("lr", "te")
    assert rights.read_only("lr") and rights.read_only("lrpk")
    assert not rights.read_only("lrs") and not rights.read_only("lri")


def test_the_command_table_follows_rfc_4314():
    assert rights.NEEDS["SELECT"] == rights.NEEDS["EXAMINE"] == rights.NEEDS["STATUS"] == "r"
    assert rights.NEEDS["CREATE"] == "k" and rights.NEEDS["DELETE"] == rights.NEEDS["RENAME"] == "x"
    assert rights.NEEDS["APPEND"] == rights.NEEDS["COPY"] == rights.NEEDS["MOVE"] == "i"
    assert rights.NEEDS["EXPUNGE"] == "e"
    assert {rights.NEEDS[c] for c in ("SETACL", "DELETEACL", "GETACL", "LISTRIGHTS")} == {"a"}
    assert rights.MOVE_SOURCE == "te"


# --- the session against a store with limited rights ------------------------------------------

class Limited(Store):
    """The user holds ``table[name]`` on each mailbox (everything when not named)."""

    def __init__(self, mail: AccountMail, table: dict[str, str]) -> None:
        super().__init__(mail)
        self.table = table

    def myrights(self, name: str) -> str:
        return self.table.get(name, rights.ALL)


def client(mail, table: dict[str, str]) -> Client:  # noqa: F811
    c = Client(mail)
    c.store = Limited(mail, table)
    assert "a OK" in c.cmd("a LOGIN bob@example.com secret")
    return c


def flags_of(mail: AccountMail, name: str) -> list[frozenset[str]]:  # noqa: F811
    return [m.flags for m in mail.messages(name)]


def test_no_rights_is_no_mailbox(mail):  # noqa: F811
    mail.create_mailbox("Hidden")
    mail.commit()
    c = client(mail, {"Hidden": ""})
    assert "s NO [NONEXISTENT]" in c.cmd("s SELECT Hidden")
    assert "Hidden" not in c.cmd('l LIST "" "*"')
    assert "m NO [NONEXISTENT]" in c.cmd("m MYRIGHTS Hidden")
    assert "t NO [NONEXISTENT]" in c.cmd("t STATUS Hidden (MESSAGES)")


def test_lookup_only_lists_but_does_not_open(mail):  # noqa: F811
    c = client(mail, {"INBOX": "l"})
    assert '"INBOX"' in c.cmd('l LIST "" "*"')
    assert "s NO [NOPERM]" in c.cmd("s SELECT INBOX")
    assert "e NO [NOPERM]" in c.cmd("e EXAMINE INBOX")
    assert '* MYRIGHTS "INBOX" l' in c.cmd("m MYRIGHTS INBOX")


def test_read_only_rights_select_read_only_and_never_set_seen(mail):  # noqa: F811
    c = client(mail, {"INBOX": "lr"})
    out = c.cmd("s SELECT INBOX")
    assert "s OK [READ-ONLY]" in out and "[PERMANENTFLAGS ()]" in out
    before = flags_of(mail, "INBOX")
    assert "f OK" in c.cmd("f FETCH 1 BODY[]")
    assert flags_of(mail, "INBOX") == before                 # no implicit \Seen without s
    assert "x NO [READ-ONLY]" in c.cmd("x STORE 1 +FLAGS (\\Seen)")
    assert "g NO [NOPERM]" in c.cmd("g GETACL INBOX")         # administering needs a
    assert '* MYRIGHTS "INBOX" lr' in c.cmd("m MYRIGHTS INBOX")


def test_store_needs_the_right_of_every_flag_it_names(mail):  # noqa: F811
    table = {"INBOX": "lrw"}
    c = client(mail, table)
    out = c.cmd("s SELECT INBOX")
    assert "s OK [READ-WRITE]" in out
    assert "\\Seen" not in out.split("PERMANENTFLAGS")[1].split("]")[0]
    assert "\\Flagged" in out.split("PERMANENTFLAGS")[1].split("]")[0]
    before = flags_of(mail, "INBOX")
    out = c.cmd("a STORE 1 +FLAGS (\\Seen)")
    assert "a NO [NOPERM]" in out and flags_of(mail, "INBOX") == before
    out = c.cmd("b STORE 1 +FLAGS (\\Flagged \\Deleted)")       # all or nothing
    assert "b NO [NOPERM]" in out and flags_of(mail, "INBOX") == before
    assert "c OK" in c.cmd("c STORE 1 +FLAGS ($Work \\Flagged)")
    assert {"$Work", "\\Flagged"} <= flags_of(mail, "INBOX")[0]
    assert "f OK" in c.cmd("f FETCH 1 BODY[]")
    assert "\\Seen" not in flags_of(mail, "INBOX")[0]         # FETCH sets \Seen only with s
    table["INBOX"] = "lrws"                                    # a grant counts at the next command
    assert "d OK" in c.cmd("d STORE 1 +FLAGS (\\Seen)")
    assert "\\Seen" in flags_of(mail, "INBOX")[0]


def test_revoking_read_ends_access_at_the_next_command(mail):  # noqa: F811
    table = {"INBOX": "lrs"}
    c = client(mail, table)
    assert "s OK" in c.cmd("s SELECT INBOX")
    table["INBOX"] = ""
    assert "f NO [NONEXISTENT]" in c.cmd("f FETCH 1 FLAGS")
    assert "x NO [NONEXISTENT]" in c.cmd("x SEARCH ALL")
    table["INBOX"] = "l"
    assert "y NO [NOPERM]" in c.cmd("y UID SEARCH ALL")


def test_expunge_and_close_need_e(mail):  # noqa: F811
    c = client(mail, {"INBOX": "lrst"})
    assert "s OK" in c.cmd("s SELECT INBOX")
    assert "a OK" in c.cmd("a STORE 1 +FLAGS (\\Deleted)")
    assert "x NO [NOPERM]" in c.cmd("x EXPUNGE")
    assert "u NO [NOPERM]" in c.cmd("u UID EXPUNGE 1:*")
    assert "c OK" in c.cmd("c CLOSE")                          # closes, expunges nothing
    assert len(mail.messages("INBOX")) == 2


def test_append_needs_i_and_keeps_only_flags_the_user_may_set(mail):  # noqa: F811
    mail.create_mailbox("Drop")
    mail.create_mailbox("Closed")
    mail.commit()
    c = client(mail, {"Drop": "lis", "Closed": "lr"})
    message = b"Subject: hi\r\n\r\nhello\r\n"
    out = c.cmd(f"a APPEND Drop (\\Seen \\Flagged) {{{len(message)}+}}\r\n".rstrip("\r\n") + "\r\n" + message.decode())
    assert "a OK [APPENDUID" in out
    assert flags_of(mail, "Drop") == [frozenset({"\\Seen"})]
    out = c.cmd(f"b APPEND Closed {{{len(message)}+}}\r\n".rstrip("\r\n") + "\r\n" + message.decode())
    assert "b NO [NOPERM]" in out and mail.messages("Closed") == []


def test_copy_needs_i_on_the_target_and_move_te_on_the_source(mail):  # noqa: F811
    mail.create_mailbox("Shared")
    mail.create_mailbox("Locked")
    mail.commit()
    table = {"Shared": "lri", "Locked": "lr", "INBOX": "lrs"}
    c = client(mail, table)
    assert "s OK" in c.cmd("s SELECT INBOX")
    assert "a NO [NOPERM]" in c.cmd("a COPY 1:* Locked")
    assert "b OK [COPYUID" in c.cmd("b COPY 2 Shared")         # message 2 is \Seen
    assert flags_of(mail, "Shared") == [frozenset()]           # no s on Shared: \Seen dropped
    assert "c NO [NOPERM]" in c.cmd("c MOVE 1 Shared")         # INBOX lacks t and e
    assert len(mail.messages("INBOX")) == 2
    table["INBOX"] = "lrste"
    assert "d OK" in c.cmd("d MOVE 1 Shared")
    assert len(mail.messages("INBOX")) == 1


def test_create_delete_rename_need_k_and_x(mail):  # noqa: F811
    mail.create_mailbox("Team")
    mail.create_mailbox("Team/Old")
    mail.commit()
    table = {"Team": "lr", "Team/Old": "lr"}
    c = client(mail, table)
    assert "a NO [NOPERM]" in c.cmd("a CREATE Team/New")
    assert "b NO [NOPERM]" in c.cmd("b DELETE Team/Old")
    assert "c NO [NOPERM]" in c.cmd("c RENAME Team/Old Team/Older")
    table.update({"Team": "lrk", "Team/Old": "lrx"})
    assert "d OK" in c.cmd("d CREATE Team/New")
    assert "e OK" in c.cmd("e RENAME Team/Old Team/Older")
    assert "f OK" in c.cmd("f CREATE Mine")                   # the user's own top level needs nothing
