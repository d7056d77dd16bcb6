"""An APPENDed message with binary content, made into one IMAP can serve (RFC 3516).

A client may APPEND octets IMAP's own strings cannot carry: NULs, in a ``literal8``
(RFC 3516 §4.4; RFC 9051 ``literal`` is ``*CHAR8``, which excludes NUL).  Stored as they
came, BODY[] and BODYSTRUCTURE would later have to hand those octets out in a plain
literal, which the grammar forbids, under a "BINARY" encoding.  RFC 3516 §6 requires
BODYSTRUCTURE to describe such a message as if its binary sections were in an encoding the
base protocol can carry, and BODY[] to return what BODYSTRUCTURE describes; §4.4 lets the
server change the Content-Transfer-Encoding of appended data as long as nothing is lost.

So each leaf part that holds a NUL (or, when it came in a ``literal8``, declares itself
``binary``) is rewritten as base64, its header's Content-Transfer-Encoding changed to
match.  BINARY[...] decodes it back to the very octets the client sent; BODY[...] serves
base64 text.  A message of plain text is returned untouched (the same bytes object), as is
one sent in a ``literal8`` without binary parts: an encoding is only changed when it has to
be (§6: gratuitous changes break signatures).
"""

from __future__ import annotations

import base64

from . import mime


class NotServable(ValueError):
    """A NUL outside any leaf part's body (in a header, between parts) or in a part whose
    encoding already claims to be text-safe: it cannot be re-encoded, so it is refused
    (RFC 3516 §4.4: NO [UNKNOWN-CTE] when the mailbox cannot store the content)."""


_IDENTITY = ("", "7bit", "8bit", "binary")
_CTE = b"content-transfer-encoding"
_CTE_LINE = b"Content-Transfer-Encoding: base64\r\n"


def servable(data: bytes, binary_literal: bool) -> bytes:
    """``data`` with its binary leaf parts base64-encoded (see the module's docstring)."""
    if b"\x00" not in data and not binary_literal:
        return data
    root = mime.analyze(data)
    edits: list[tuple[int, int, bytes]] = []
    for part in root.walk():
        if part.multipart or part.message is not None or part.header_start == part.header_end:
            continue        # (an empty multipart's stand-in part has no header of its own)
        body = data[part.body_start:part.body_end]
        encoding = part.encoding
        if not body or encoding not in _IDENTITY:
            continue
        if b"\x00" not in body and not (binary_literal and encoding == "binary"):
            continue
        edits.append((part.header_start, part.header_end,
                      _base64_header(data[part.header_start:part.header_end])))
        encoded = b"\r\n".join(base64.encodebytes(body).splitlines())
        # The CRLF before a multipart delimiter belongs to the delimiter, not to the body;
        # a body that ran to a line end of its own (the message's last part) keeps one.
        edits.append((part.body_start, part.body_end, encoded + (b"\r\n" if body.endswith(b"\n") else b"")))
    out = data
    for start, end, replacement in sorted(edits, reverse=True):
        out = out[:start] + replacement + out[end:]
    if b"\x00" in out:
        raise NotServable("a NUL outside any part that can be re-encoded")
    if edits and root.header("MIME-Version") is None:
        # Content-Transfer-Encoding means something only in a MIME message (RFC 2045 §4).
        out = b"MIME-Version: 1.0\r\n" + out
    return out


def _base64_header(block: bytes) -> bytes:
    """A part's header block with its Content-Transfer-Encoding field (folded lines and
    all) replaced by ``base64``, or one added before the blank line when it had none."""
    out: list[bytes] = []
    lines = block.splitlines(keepends=True)
    in_cte = written = False
    for n, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            if not written:
                out.append(_CTE_LINE)
            out.extend(lines[n:])
            return b"".join(out)
        if in_cte and line[:1] in (b" ", b"\t"):
            continue
        in_cte = line.partition(b":")[0].strip().lower() == _CTE
        if in_cte:
            if not written:
                out.append(_CTE_LINE)
                written = True
            continue
        out.append(line)
    if not written:
        out.append(_CTE_LINE)
    return b"".join(out)


__all__ = ["servable", "NotServable"]
