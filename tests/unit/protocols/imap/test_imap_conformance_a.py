"""FETCH sections, SEARCH, SORT and THREAD details that IMAP conformance suites check and
that are easy to get subtly wrong: each case names the RFC rule it holds the server to."""

from __future__ import annotations

from colony.protocols.imap.mime import analyze, find_part, section_bytes

# A forwarded message whose body is itself a forwarded message (message/rfc822 twice).
FORWARD_OF_FORWARD = (b"From: desk@shop.example\r\nSubject: fwd fwd\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: message/rfc822\r\n\r\n"
                      b"From: clerk@shop.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: message/rfc822\r\n\r\n"
                      b"From: buyer@home.example\r\nSubject: order 17\r\n\r\n"
                      b"two lamps, please\r\n")
CLERK = FORWARD_OF_FORWARD.index(b"From: clerk")
BUYER = FORWARD_OF_FORWARD.index(b"From: buyer")


def test_part_one_of_a_message_rfc822_message_is_the_whole_encapsulated_message():
    """RFC 9051 §6.4.5: a non-multipart message's part 1 is its body, and the body of a
    message/rfc822 message is the encapsulated message, header included; n.HEADER and n.TEXT
    are then that message's header and text, and n.1 its own part 1."""
    data = FORWARD_OF_FORWARD
    root = analyze(data)
    assert section_bytes(data, root, [1], None) == data[CLERK:]
    assert section_bytes(data, root, [1], "HEADER") == (b"From: clerk@shop.example\r\nSubject: fwd\r\n"
                                                        b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n")
    assert section_bytes(data, root, [1], "TEXT") == data[BUYER:]
    assert section_bytes(data, root, [1], "HEADER.FIELDS", ["subject"]) == b"Subject: fwd\r\n\r\n"
    assert section_bytes(data, root, [1, 1], None) == data[BUYER:]
    assert section_bytes(data, root, [1, 1], "HEADER") == b"From: buyer@home.example\r\nSubject: order 17\r\n\r\n"
    assert section_bytes(data, root, [1, 1, 1], None) == b"two lamps, please\r\n"
    assert section_bytes(data, root, [1, 1], "TEXT") == b"two lamps, please\r\n"
    assert find_part(root, [1, 1, 1]).subtype == "plain"


def test_a_boundary_folded_across_header_lines_is_unfolded():
    """RFC 5322 §2.2.3: unfolding removes the CRLF before the whitespace, so the boundary
    of ``boundary="cut<CRLF> here"`` is ``cut here`` and its parts are found."""
    data = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="cut\r\n here"\r\n\r\n'
            b"preamble\r\n--cut here\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
            b"--cut here\r\nContent-Type: text/html\r\n\r\n<b>second</b>\r\n--cut here--\r\n")
    root = analyze(data)
    assert [c.subtype for c in root.children] == ["plain", "html"]
    assert ("boundary", "cut here") in root.params
    assert section_bytes(data, root, [1], None) == b"first"
    assert section_bytes(data, root, [2], "MIME") == b"Content-Type: text/html\r\n\r\n"
