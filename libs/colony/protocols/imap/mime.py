"""A message's MIME structure with byte offsets: what IMAP's FETCH needs (RFC 9051 §6.4.5,
§7.5.2): ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] without parsing a message twice.

``analyze(data)`` walks a message once and returns a ``Part`` tree whose nodes know where
their header and body lie in the original octets, so a section is served by slicing (or by
seeking in the stored body file) and the tree itself is small enough to keep beside the
message.  Header fields are parsed with the standard library's ``email`` package (RFC 2231
parameters and continuations); boundaries and offsets are found here, because ``email``
does not keep them.

Malformed input is normal input here: a missing boundary, an unterminated multipart, a
header without a body, LF-only line ends, NULs -- all give *some* structure, never an
exception.  Nesting is cut at ``MAX_DEPTH`` (the rest is treated as an opaque body), so a
hostile message cannot make BODYSTRUCTURE deep or slow.

Part numbering follows RFC 9051 §6.4.5: the parts of a multipart are 1, 2, ...; a
non-multipart message's body is part 1; the parts of an encapsulated message/rfc822 are
numbered under it (its own header is ``n.HEADER``).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

MAX_DEPTH = 32
MAX_PARTS = 10_000
# Header octets handed to the email parser, per part and per message: its objects cost ~20
# times the octets (a 13 MB header block peaked at 280 MB), and anyone may mail a message of
# the largest size accepted that is all header fields.  What lies beyond is not parsed (its
# fields count for nothing in ENVELOPE, BODYSTRUCTURE and header searches) but is still
# served whole by BODY[HEADER], which slices the octets.
MAX_HEADER_PART = 256 * 1024
MAX_HEADER_MESSAGE = 4 * 1024 * 1024

_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class Part:
    header_start: int
    header_end: int            # end of the header block, blank line included
    body_start: int
    body_end: int
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: Message | None = None
    children: list[Part] = field(default_factory=list)
    message: Part | None = None          # message/rfc822: the encapsulated message
    lines: int = 0                       # body lines (text/* and message/rfc822)
    # FETCH renderings of the message this is the root of (ENVELOPE, BODYSTRUCTURE, small
    # sections), kept by the IMAP session: the octets never change, so neither do they.
    rendered: dict | None = field(default=None, compare=False, repr=False)

    @property
    def multipart(self) -> bool:
        return self.maintype == "multipart"

    def header(self, name: str) -> str | None:
        return field_value(self.headers, name)

    @property
    def encoding(self) -> str:
        """The Content-Transfer-Encoding mechanism, lower case, "" when there is none: a
        structured field (RFC 2045 §6.1), so comments may surround the token (RFC 5322 §3.2.2,
        which RFC 2045 §3 refers to) -- ``7bit (sent as is)`` is 7bit, not an unknown
        encoding."""
        return without_comments(self.header("Content-Transfer-Encoding") or "").strip().lower()

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()
        if self.message is not None:
            yield from self.message.walk()


def field_value(headers: Message | None, name: str) -> str | None:
    """The first ``name`` field's value as written, 8-bit octets read as UTF-8 (RFC 6532:
    what an SMTPUTF8 sender, or a script that never heard of encoded-words, puts there).
    compat32 hands such a value out as a ``Header`` of charset unknown-8bit, whose ``str()``
    makes every octet U+FFFD: ENVELOPE showed "Grüße" as "Gr����e" and no SEARCH SUBJECT or
    FROM could match it.  Octets that are not UTF-8 stay as surrogates, so they go out as
    they came in."""
    if headers is None:
        return None
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    wanted = name.lower()
    for key, raw in headers.raw_items():
        if key.lower() == wanted:
            return raw.encode("ascii", "surrogateescape").decode("utf-8", "surrogateescape")
    return str(value)


def _readable(headers: Message, name: str) -> Message:
    """``headers`` to read the parameters of field ``name`` from (``get_params``): a field
    with 8-bit octets (a raw UTF-8 ``name="Größe.pdf"``) goes, read as UTF-8, into a Message
    of its own, since compat32 would give each octet as U+FFFD (see ``field_value``); so
    does one with comments, which RFC 2045 §5.1 allows anywhere a structured field has
    blanks (``text/plain; charset=us-ascii (Plain text)``) and which the email package would
    otherwise keep in the subtype or the parameter's value."""
    value = headers.get(name)
    if value is None or (isinstance(value, str) and "(" not in value):
        return headers
    own = Message()
    own[name] = without_comments(field_value(headers, name))
    return own


def _headers(data: bytes, start: int, end: int, counter: list[int]) -> Message:
    """The header fields in [start, end), within ``MAX_HEADER_PART`` and what is left of the
    message's ``MAX_HEADER_MESSAGE`` (``counter[1]``), cut at a line end."""
    allowed = min(end - start, MAX_HEADER_PART, max(0, MAX_HEADER_MESSAGE - counter[1]))
    if allowed < end - start:
        cut = data.rfind(b"\n", start, start + allowed)
        end = cut + 1 if cut >= start else start
    counter[1] += end - start
    block = data[start:end]
    if _OBS_NAME.search(block):
        block = _OBS_NAME.sub(rb"\1:", block)
    return BytesHeaderParser(policy=compat32).parsebytes(block)


# A field name followed by blanks before its colon (RFC 5322 §4.5.3's obsolete syntax, which
# §4 says must be accepted): the email package takes such a line for the start of the body,
# and every field after it was lost (ENVELOPE without its Date, Message-ID, ...).
_OBS_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:", re.MULTILINE)


def _split(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header block, start of the body) within [start, end)."""
    if data.startswith(b"\r\n", start, end) or data.startswith(b"\n", start, end):
        body = start + (2 if data.startswith(b"\r\n", start, end) else 1)
        return body, body                 # no header fields at all
    match = _HEADER_END.search(data, start, end)
    if not match:
        return end, end                   # all header, no body
    return match.end(), match.end()


def analyze(data: bytes) -> Part:
    counter = [0, 0]        # parts made, header octets parsed
    return _part(data, 0, len(data), ("text", "plain"), 0, counter)


def _count_lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    n = data.count(b"\n", start, end)
    return n if data[end - 1:end] == b"\n" else n + 1


def _part(data: bytes, start: int, end: int, default: tuple[str, str], depth: int, counter: list[int]) -> Part:
    counter[0] += 1
    header_end, body_start = _split(data, start, end)
    headers = _headers(data, start, header_end, counter)
    typed = _readable(headers, "Content-Type")
    ctype = typed.get_content_type() if typed.get("Content-Type") else "/".join(default)
    maintype, _, subtype = ctype.partition("/")
    if not typed.get("Content-Type") and default == ("message", "rfc822"):
        maintype, subtype = default
    params = [(k.lower(), _unfold(v if isinstance(v, str) else rfc2231(v)))
              for k, v in (typed.get_params() or [])[1:]] if typed.get("Content-Type") else []
    if maintype.lower() == "text" and not any(k == "charset" for k, _ in params):
        params = [("charset", "us-ascii"), *params]   # RFC 2045 §5.2 default
    part = Part(start, header_end, body_start, end, maintype.lower(), subtype.lower(), params, headers)
    if depth >= MAX_DEPTH or counter[0] >= MAX_PARTS:
        part.maintype, part.subtype = "application", "octet-stream"
        return part
    if part.maintype == "multipart":
        boundary = typed.get_param("boundary")
        if isinstance(boundary, tuple):
            boundary = rfc2231(boundary)
        if boundary:
            boundary = _unfold(boundary)
        child_default = ("message", "rfc822") if part.subtype == "digest" else ("text", "plain")
        if boundary:
            for a, b in _body_parts(data, body_start, end, boundary.encode("utf-8", "replace")):
                if counter[0] >= MAX_PARTS:
                    break
                part.children.append(_part(data, a, b, child_default, depth + 1, counter))
        if not part.children:
            # RFC 2046 requires at least one part; an empty or broken multipart still needs one
            # so part numbers mean something.
            part.children.append(Part(body_start, body_start, body_start, end, "text", "plain",
                                      [("charset", "us-ascii")], Message(),
                                      lines=_count_lines(data, body_start, end)))
    elif (part.maintype, part.subtype) in (("message", "rfc822"), ("message", "global")):
        part.message = _part(data, body_start, end, ("text", "plain"), depth + 1, counter)
        part.lines = _count_lines(data, body_start, end)
    elif part.maintype == "text":
        part.lines = _count_lines(data, body_start, end)
    return part


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def without_comments(value: str) -> str:
    """``value`` with its RFC 5322 comments (nested, with quoted-pairs) removed; quoted
    strings are kept whole."""
    out: list[str] = []
    depth, i, quoted = 0, 0, False
    while i < len(value):
        c = value[i]
        if c == "\\" and (depth or quoted):
            if not depth:
                out.append(value[i:i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
            out.append(c)
        elif c == '"' and not depth:
            quoted = True
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
        i += 1
    return "".join(out)


def _unfold(value: str) -> str:
    """A parameter value as RFC 5322 §2.2.3 unfolds it: the email package (compat32) keeps
    the line break of a folded header inside a quoted value, so a boundary written
    ``"foo<CRLF> bar"`` would never match its delimiter lines ``--foo bar``."""
    return _FOLD.sub("", value)


def rfc2231(value) -> str:
    """An RFC 2231 parameter value (``filename*=utf-8''%C3%BCber.pdf``, as get_params gives
    it: charset, language, octets read as Latin-1) in its charset: "über.pdf"."""
    from email.utils import collapse_rfc2231_value

    return collapse_rfc2231_value(value)


def _body_parts(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """[start, end) of each body part between ``--boundary`` lines (RFC 2046 §5.1.1): the CRLF
    before a delimiter belongs to the delimiter; a missing close delimiter ends at ``end``."""
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)", re.MULTILINE)
    parts: list[tuple[int, int]] = []
    current: int | None = None
    pos = start
    while True:
        match = delimiter.search(data, pos, end)
        if not match:
            break
        if current is not None:
            parts.append((current, max(match.start(), current)))
        if match.group(1):              # close delimiter
            return parts
        current = match.end()
        pos = max(match.end(), pos + 1)
    if current is not None:
        parts.append((current, end))
    return parts


# --- sections ---------------------------------------------------------------------------------

class SectionError(ValueError):
    pass


def find_part(root: Part, numbers: list[int]) -> Part:
    """The part ``numbers`` names (``[]`` is the whole message)."""
    part = root
    for depth, n in enumerate(numbers):
        # A message/rfc822 *part* numbers its subparts inside the message it encapsulates; the
        # root is the message itself, whose part 1 (when it is not multipart) is its body even
        # when that body is a message: BODY[1] of a message/rfc822 message is the whole
        # encapsulated message and BODY[1.HEADER] its header (RFC 9051 §6.4.5).
        if depth and part.message is not None and not part.multipart:
            part = part.message
        if part.multipart:
            if not 1 <= n <= len(part.children):
                raise SectionError(f"no part {n}")
            part = part.children[n - 1]
        elif n == 1:
            continue                      # a single-part entity's body is its part 1
        else:
            raise SectionError(f"no part {n}")
    return part


def section_bytes(data: bytes, root: Part, numbers: list[int], text: str | None,
                  fields: list[str] | None = None) -> bytes:
    """The octets of BODY[<numbers>.<text>] (RFC 9051 §6.4.5); ``text`` is None (the part's
    body, or the whole message for ``[]``), HEADER, TEXT, MIME, HEADER.FIELDS or
    HEADER.FIELDS.NOT (with ``fields``)."""
    part = find_part(root, numbers)
    if text is None:
        if not numbers:
            return data[root.header_start:root.body_end]
        return data[part.body_start:part.body_end]
    if text == "MIME":
        if not numbers:
            raise SectionError("MIME needs a part number")
        return data[part.header_start:part.header_end]
    target = part
    if numbers:
        if part.message is None:
            raise SectionError(f"{text} is only for message parts")
        target = part.message
    if text == "HEADER":
        return data[target.header_start:target.header_end]
    if text == "TEXT":
        return data[target.body_start:target.body_end]
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        wanted = {f.lower() for f in fields or []}
        keep = text == "HEADER.FIELDS"
        block = data[target.header_start:target.header_end]
        out = bytearray()
        for name, raw in header_fields(block):
            if (name.lower() in wanted) == keep:
                out += raw if raw.endswith(b"\n") else raw + b"\r\n"   # the last field of a message
        # "the blank line is included in all header fetches, except in the case of a message
        # which has no body and no blank line" (RFC 3501 §6.4.5, RFC 9051 §6.4.5)
        blank = block.endswith(b"\n\n") or block.endswith(b"\n\r\n") or block in (b"\n", b"\r\n")
        return bytes(out) + (b"\r\n" if blank else b"")
    raise SectionError(f"unknown section text {text}")


def header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """Each header field of a block as (name, raw octets with its continuation lines)."""
    fields: list[tuple[str, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
            continue
        name, colon, _ = line.partition(b":")
        if colon:
            fields.append((name.strip().decode("ascii", "replace"), line))
    return fields


# --- content transfer encodings ---------------------------------------------------------------

_BASE64_OTHER = re.compile(rb"[^A-Za-z0-9+/]")
_TRAILING_BLANKS = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def decode_base64(data: bytes) -> bytes:
    """A base64 body as mail carries it (RFC 2045 §6.8): characters outside the alphabet
    (line breaks, spaces) are ignored, "=" ends the data, and a body whose padding was lost
    still decodes (a lone last character, which holds no whole octet, is dropped) -- where
    strict decoding fails and would leave nothing but the encoded text to serve."""
    clean = _BASE64_OTHER.sub(b"", data.split(b"=", 1)[0])
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def decode_quoted_printable(data: bytes) -> bytes:
    """A quoted-printable body (RFC 2045 §6.7): blanks at the end of a line were added in
    transport and are deleted first (rule 3), so ``=`` followed by them is still a soft line
    break; =XX in either case, and an "=" that starts no escape is kept as it is."""
    return binascii.a2b_qp(_TRAILING_BLANKS.sub(b"", data))
