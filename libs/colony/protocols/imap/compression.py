"""IMAP COMPRESS=DEFLATE (RFC 4978): the raw DEFLATE streams (RFC 1951, no zlib header) of
one connection, sans-IO.

Theory of operation
-------------------
Once the session answered ``OK`` to ``COMPRESS DEFLATE`` (``session.StartCompression``), every
octet after that answer's CRLF is compressed, both ways, each direction one stream for the
rest of the connection.  The shell puts a ``Deflate`` between the session and the socket:

* ``compress(data)`` for what the session sends; the compressor keeps back what does not
  fill a block, so the shell calls ``flush()`` (``Z_SYNC_FLUSH``: the client can inflate
  everything sent so far) whenever it is about to wait for the client -- after a command's
  responses, an IDLE update, before closing -- rather than after every line of a long FETCH;
* ``feed(data)`` for what arrives, then ``inflate()`` until ``pending`` is False: each call
  gives at most ``chunk`` octets of plaintext, the rest of the input waiting compressed
  (``unconsumed_tail``).  A few kilobytes that inflate to gigabytes (a "decompression
  bomb") thus never exist inflated at once: the session's reader takes each chunk under its
  own line and literal limits before the next is made.  Input that does not inflate raises
  ``CorruptStream``; no answer can reach a client whose stream is broken, so the shell just
  closes.

Memory per connection: zlib's deflate state and inflate state, about 190 KiB together, plus
at most the compressed input the shell read and one ``chunk``.  The deflate state is the
larger part: a 32 KiB window costs 128 KiB, and ``MEM_LEVEL`` 5 a 16 KiB hash table where
zlib's default 8 takes 128 KiB; on a FETCH stream of mail (headers and text) the smaller
table gave output 1 % larger (34.5 % of the input against 34.1 %), while a smaller window
costs more (8 KiB: 40 %).
"""

from __future__ import annotations

import zlib

MECHANISM = "DEFLATE"
CAPABILITY = f"COMPRESS={MECHANISM}"
WBITS = -15               # raw DEFLATE, 32 KiB window (RFC 4978 §3)
LEVEL = 6                 # zlib's default, and Dovecot's
MEM_LEVEL = 5             # (see above)
INFLATE_CHUNK = 64 * 1024


class CorruptStream(Exception):
    """Compressed input that is not a DEFLATE stream (or goes on past the stream's end)."""


class Deflate:
    def __init__(self, level: int = LEVEL, chunk: int = INFLATE_CHUNK) -> None:
        self.chunk = chunk
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, WBITS, MEM_LEVEL)
        self._inflater = zlib.decompressobj(WBITS)
        self._input = b""           # compressed octets not inflated yet
        self._more = False          # the last inflate() filled its chunk: zlib may hold more
        self._unflushed = False     # compressed since the last flush()
        self.octets_in = self.octets_out = 0       # compressed octets read and written
        self.plain_in = self.plain_out = 0         # the plaintext they carried

    # --- toward the client -----------------------------------------------------------------

    def compress(self, data: bytes) -> bytes:
        self._unflushed = True
        self.plain_out += len(data)
        out = self._deflater.compress(data)
        self.octets_out += len(out)
        return out

    def flush(self) -> bytes:
        """What the client needs to inflate everything compressed so far (b"" if nothing is)."""
        if not self._unflushed:
            return b""
        self._unflushed = False
        out = self._deflater.flush(zlib.Z_SYNC_FLUSH)
        self.octets_out += len(out)
        return out

    # --- from the client -------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Fed input not inflated yet: call ``inflate()`` again before feeding more."""
        return bool(self._input) or self._more

    def feed(self, data: bytes) -> None:
        self.octets_in += len(data)
        self._input = self._input + data if self._input else data

    def inflate(self) -> bytes:
        """At most ``chunk`` octets of plaintext from the input fed (b"": it needs more)."""
        if not self.pending:
            return b""
        try:
            out = self._inflater.decompress(self._input, self.chunk)
        except zlib.error as exc:
            self._input, self._more = b"", False
            raise CorruptStream(str(exc)) from None
        self._input = self._inflater.unconsumed_tail
        # A full chunk may leave output inside zlib with no input left: ask again.
        self._more = len(out) == self.chunk
        if self._inflater.eof and self._inflater.unused_data:
            raise CorruptStream("data after the end of the compressed stream")
        self.plain_in += len(out)
        return out
