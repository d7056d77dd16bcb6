"""The POP3 core on either side of a hand-off: the edge's leftover input, the store's start."""

from __future__ import annotations

from colony.protocols.pop3.rules import Authenticate, Commit, MessageInfo, Pop3Server


def test_edge_side_passes_on_what_was_pipelined_after_pass():
    c = Pop3Server(lambda: 0.0, tls_available=True, tls_active=True)
    c.data_to_send()
    c.receive_data(b"USER alice@acme.example\r\nPASS pw\r\nSTAT\r\nLIST\r\n")
    assert c.next_event() == Authenticate("alice@acme.example", "pw", "USER")
    assert c.leftover() == b"STAT\r\nLIST\r\n"


def test_store_side_starts_in_transaction_with_only_the_status_line():
    c = Pop3Server(lambda: 0.0, tls_available=False, allow_plaintext=True)
    c.handed_over("alice@acme.example", [MessageInfo(10, "7-1"), MessageInfo(20, "7-2")])
    assert c.data_to_send() == b"+OK alice@acme.example has 2 message(s) (30 octets)\r\n"
    c.receive_data(b"UIDL\r\nDELE 2\r\nQUIT\r\n")
    assert c.data_to_send().startswith(b"+OK listing follows\r\n1 7-1\r\n2 7-2\r\n.\r\n+OK Message 2 deleted")
    assert c.next_event() == Commit((2,))
