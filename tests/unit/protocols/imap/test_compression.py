"""IMAP COMPRESS=DEFLATE (RFC 4978) without sockets: the session's answers and where it tells
the shell to start compressing, the edge's pre-login core that never offers it, and the
codec (``compression.Deflate``) against Python's zlib as the client, with a decompression
bomb and corrupt input."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest

from colony.protocols.imap import compression
from colony.protocols.imap import session as S
from colony.protocols.imap.preauth import ImapPreauth


def _handed_over() -> S.Session:
    session = S.Session(lambda: 0.0, account="bob@example.com", handed_over=True)
    first = session.next_action()
    assert isinstance(first, S.Send) and first.data.startswith(b"OK [CAPABILITY ")
    assert b" COMPRESS=DEFLATE" in first.data      # the line the edge relays as the LOGIN answer
    return session


def _actions(session: S.Session, data: bytes) -> list:
    session.receive_data(data)
    out = []
    while (action := session.next_action()) is not None:
        out.append(action)
    return out


def test_compress_deflate_is_answered_ok_and_compression_starts_right_after_that_line():
    session = _handed_over()
    actions = _actions(session, b"a CAPABILITY\r\nb COMPRESS DEFLATE\r\n")
    assert b"COMPRESS=DEFLATE" in actions[0].data and actions[1] == S.Send(b"a OK CAPABILITY completed\r\n")
    # RFC 4978 §3: the tagged OK is the last octets in the clear, StartCompression follows it.
    assert actions[2:] == [S.Send(b"b OK DEFLATE active\r\n"), S.StartCompression()]
    assert session.compressing
    # A second one: NO with the response code; the mechanism is not even looked at.
    assert _actions(session, b"c COMPRESS DEFLATE\r\nd compress deflate\r\n") == [
        S.Send(b"c NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n"),
        S.Send(b"d NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n")]


def test_an_unknown_mechanism_or_none_is_bad_and_leaves_the_session_in_plaintext():
    session = _handed_over()
    assert _actions(session, b"a COMPRESS LZW\r\n") == [S.Send(b"a BAD Unknown compression mechanism LZW\r\n")]
    bad = _actions(session, b"b COMPRESS\r\nc COMPRESS DEFLATE EXTRA\r\n")
    assert [a.data[:6] for a in bad] == [b"b BAD ", b"c BAD "]
    assert not session.compressing
    assert _actions(session, b"d COMPRESS deflate\r\n")[-1] == S.StartCompression()     # case-insensitive


def test_commands_pipelined_behind_compress_keep_the_session_in_plaintext():
    """§3: the client must wait for COMPRESS's answer; whatever it sent before seeing it was
    read as plaintext, so the server must not start compressing under it."""
    session = _handed_over()
    actions = _actions(session, b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    assert actions[0] == S.Send(b"a BAD COMPRESS must be the last command sent until its answer\r\n")
    assert S.StartCompression() not in actions and not session.compressing
    session = _handed_over()
    actions = _actions(session, b"a COMPRESS DEFLATE\r\nb NO")       # even a part of a line
    assert actions[0].data.startswith(b"a BAD ") and not session.compressing


def test_not_offered_nor_taken_before_login():
    """The grammar makes COMPRESS a command of the authenticated state (command-auth): the
    store's own login listener does not offer it before LOGIN, and neither does the edge,
    which speaks IMAP until the store has the session."""
    session = S.Session(lambda: 0.0)
    greeting = session.next_action()
    assert b"COMPRESS" not in greeting.data
    actions = _actions(session, b"a CAPABILITY\r\nb COMPRESS DEFLATE\r\n")
    assert b"COMPRESS" not in actions[0].data
    assert actions[-1] == S.Send(b"b BAD COMPRESS is not allowed before login\r\n")
    session.receive_data(b"c LOGIN bob pw\r\n")
    assert isinstance(session.next_action(), S.Authenticate)
    session.auth_result("c", "bob@example.com")
    assert b"COMPRESS=DEFLATE]" in session.next_action().data

    edge = ImapPreauth(tls_available=True, tls_active=True)
    edge.receive_data(b"a CAPABILITY\r\nb COMPRESS DEFLATE\r\n")
    out = edge.data_to_send()
    assert b"COMPRESS" not in out.split(b"b BAD")[0] and b"b BAD" in out


def test_the_codec_against_zlib_as_the_client():
    codec = compression.Deflate()
    client_out = zlib.compressobj(9, zlib.DEFLATED, -15)
    client_in = zlib.decompressobj(-15)
    lines = [b"* %d FETCH (FLAGS (\\Seen))\r\n" % n for n in range(1, 2000)]
    wire = b"".join(codec.compress(line) for line in lines)
    # Without a flush the compressor keeps the tail back; a sync flush releases all of it.
    so_far = client_in.decompress(wire)
    assert len(so_far) < len(b"".join(lines))
    flushed = codec.flush()
    assert codec.flush() == b""                  # nothing compressed since: nothing to send
    assert so_far + client_in.decompress(flushed) == b"".join(lines)
    assert codec.octets_out * 10 < codec.plain_out

    codec.feed(client_out.compress(b"a NOOP\r\n" * 3) + client_out.flush(zlib.Z_SYNC_FLUSH))
    got = b""
    while codec.pending:
        got += codec.inflate()
    assert got == b"a NOOP\r\n" * 3
    assert codec.inflate() == b"" and not codec.pending


def test_a_decompression_bomb_inflates_one_chunk_at_a_time():
    """256 MiB of one octet compress to ~250 KiB; each inflate() gives at most a chunk, so
    what exists inflated at once stays a chunk, not the bomb."""
    client = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"A" * (1 << 20)
    bomb = b"".join(client.compress(block) for _ in range(256)) + client.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 300_000
    codec = compression.Deflate()
    tracemalloc.start()
    try:
        codec.feed(bomb)
        del bomb
        tracemalloc.reset_peak()
        total = largest = 0
        while codec.pending:
            out = codec.inflate()
            total, largest = total + len(out), max(largest, len(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 256 << 20 and largest == compression.INFLATE_CHUNK
    assert peak < 2 * 1024 * 1024, peak     # the compressed input plus a chunk, never the bomb


def test_corrupt_input_and_data_after_the_end_raise():
    codec = compression.Deflate()
    codec.feed(b"\xff" * 64)              # BTYPE 11: a reserved block type
    with pytest.raises(compression.CorruptStream):
        codec.inflate()
    finished = zlib.compressobj(6, zlib.DEFLATED, -15)
    codec = compression.Deflate()
    codec.feed(finished.compress(b"a LOGOUT\r\n") + finished.flush() + b"garbage")
    with pytest.raises(compression.CorruptStream):
        codec.inflate()


@pytest.mark.parametrize("compressed", [False, True])
def test_what_the_reader_would_skip_under_compress_ends_the_session_instead(compressed):
    """RFC 7888 §4 lets a server close rather than read a refused non-synchronizing literal.
    Compressed, each octet of it may inflate to a thousand the store inflates only to drop;
    in the clear it costs the store no more than the client's bandwidth, and is skipped."""
    for refused in (b"a APPEND INBOX {999999999+}\r\n", b"a NOOP " + b"x" * (70 * 1024) + b"\r\n"):
        session = _handed_over()
        if compressed:
            assert _actions(session, b"z COMPRESS DEFLATE\r\n")[-1] == S.StartCompression()
        actions = _actions(session, refused)
        sent = b"".join(a.data for a in actions if isinstance(a, S.Send))
        assert sent.startswith((b"a NO [TOOBIG]", b"a BAD Command line too long")), sent
        assert (b"* BYE " in sent and isinstance(actions[-1], S.Close)) is compressed, actions
        if not compressed and b"NOOP" in refused:     # (a literal's octets are still being skipped)
            after = _actions(session, b"b NOOP\r\n")       # read and worked on (here: it asks the store)
            assert after and not any(isinstance(a, S.Close) for a in after), after


@pytest.mark.parametrize("compressed", [False, True])
def test_a_literal_where_the_tag_or_command_name_goes_under_compress_ends_the_session(compressed):
    """"a {n+}" is no command (a BAD), and the reader skips its literal as it arrives -- a third
    way to make the store inflate octets only to drop them, besides a refused literal and an
    over-long line: under COMPRESS the session ends instead, as for those."""
    for refused in (b"a {999999999+}\r\n", b"{999999999+}\r\n"):
        session = _handed_over()
        if compressed:
            assert _actions(session, b"z COMPRESS DEFLATE\r\n")[-1] == S.StartCompression()
        actions = _actions(session, refused)
        sent = b"".join(a.data for a in actions if isinstance(a, S.Send))
        assert b" BAD " in sent.split(b"\r\n")[0] + b" ", sent
        assert (b"* BYE " in sent and isinstance(actions[-1], S.Close)) is compressed, actions
    if compressed:
        # Only the line that made the reader skip ends the session: a command before it is
        # answered, and the refusal that follows answers for itself.
        session = _handed_over()
        assert _actions(session, b"z COMPRESS DEFLATE\r\n")[-1] == S.StartCompression()
        actions = _actions(session, b"b CAPABILITY\r\nc APPEND INBOX {999999999+}\r\n")
        sent = b"".join(a.data for a in actions if isinstance(a, S.Send))
        assert b"b OK CAPABILITY" in sent and b"c NO [TOOBIG]" in sent, sent
        assert sent.index(b"b OK") < sent.index(b"c NO") < sent.index(b"* BYE "), sent
