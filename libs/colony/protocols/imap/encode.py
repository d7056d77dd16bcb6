"""Writing IMAP data items: strings, ENVELOPE and BODY/BODYSTRUCTURE (RFC 9051 §7.5.2,
RFC 3501 §7.4.2).

Strings are sent quoted when that is safe (no CR/LF/NUL, short, ASCII -- or UTF-8 once the
client enabled IMAP4rev2/UTF8=ACCEPT) and as literals otherwise, so no header value a sender
chose can break the response syntax.  Header values in ENVELOPE are sent as they are in the
message (encoded-words stay encoded; that is the protocol's rule).
"""

from __future__ import annotations

from email.message import Message

from colony.protocols.imap.mime import Part, field_value, rfc2231, without_comments

NIL = b"NIL"
_QUOTE_LIMIT = 1024


# ASTRING-CHAR (RFC 3501 §9, RFC 9051 §9): any printable ASCII but the atom-specials, with "]"
_ASTRING_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'(){%*"\\')


def astring(value: str) -> bytes:
    """An astring (ACL identifiers and rights, RFC 4314): an atom when it can be one, as
    Dovecot and Cyrus send them and as clients such as imapclient and cyradm read them; else
    a string."""
    data = value.encode("utf-8", "surrogateescape")
    if data and all(c in _ASTRING_CHARS for c in data):
        return data
    return string(data)


def string(value: bytes | str | None, utf8: bool = False) -> bytes:
    if value is None:
        return NIL
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    quotable = len(data) <= _QUOTE_LIMIT and b"\r" not in data and b"\n" not in data and b"\x00" not in data
    if quotable and not utf8:
        quotable = all(0x20 <= c < 0x7F for c in data)
    if quotable and utf8:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            quotable = False
    if quotable:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring_or_nil(value: str | None, utf8: bool = False) -> bytes:
    return NIL if value is None or value == "" else string(value, utf8)


def paren(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


# --- addresses (RFC 5322 §3.4, with groups) -------------------------------------------------

def _tokens(text: str, spaces: bool = False) -> list[tuple[str, str]]:
    """RFC 5322 lexical tokens: ("a", atom), ("q", quoted-string content), ("c", comment),
    ("s", special); with ``spaces``, also ("w", " ") for each run of whitespace."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            if spaces and (not out or out[-1][0] != "w"):
                out.append(("w", " "))
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j, buf = 1, i + 1, []
            while j < len(text) and depth:
                if text[j] == "\\" and j + 1 < len(text):
                    buf.append(text[j + 1])
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth:
                    buf.append(text[j])
                j += 1
            out.append(("c", "".join(buf)))
            i = j
        elif c in "<>@,;:.[]":
            if c == "[":
                j = text.find("]", i)
                j = len(text) - 1 if j < 0 else j
                out.append(("a", text[i:j + 1]))
                i = j + 1
                continue
            out.append(("s", c))
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in ' \t\r\n"()<>@,;:.[]':
                j += 1
            out.append(("a", text[i:j]))
            i = j
    return out


Address = tuple[str | None, str | None, str | None, str | None]   # name, adl, mailbox, host

# What an address without a local part or a domain (``@example.org``, ``user@``, ``<>``) has in
# their place, as c-client and Dovecot write it: a NIL there would make the address read as a
# group's start (NIL host) or end (NIL mailbox and host, RFC 9051 §7.5.2) marker.
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"


def parse_addresses(text: str) -> list[Address]:
    """An address-list into IMAP's (name adl mailbox host) tuples, groups as the start
    (NIL NIL group NIL) and end (NIL NIL NIL NIL) markers; tolerant of what MUAs write."""
    tokens: list[tuple[str, str]] = []
    spaced: list[bool] = []           # whitespace before tokens[i]
    gap = False
    for token in _tokens(text, spaces=True):
        if token[0] == "w":
            gap = True
            continue
        tokens.append(token)
        spaced.append(gap)
        gap = False
    out: list[Address] = []
    words: list[tuple[str, str]] = []
    first_word = 0                    # the index in tokens of words[0]
    in_group = False

    def phrase() -> str | None:
        """A display name or group name as written: its words, quoted strings without their
        quotes, and the "." obs-phrase allows ("Joe Q. Public", RFC 5322 §4.1), with the
        blanks between them as one space (a comment separates words like a blank)."""
        name, pending = "", False
        for k, (kind, value) in enumerate(words):
            if kind == "c":
                pending = True
                continue
            if kind not in ("a", "q") and (kind, value) != ("s", "."):
                continue
            if name and (pending or spaced[first_word + k]):
                name += " "
            name += value
            pending = False
        return name or None

    def flush_addr_spec(ws: list[tuple[str, str]]) -> None:
        comments = [v for k, v in ws if k == "c"]
        plain = [(k, v) for k, v in ws if k != "c"]
        if not plain:
            return
        text_ = "".join(v for _, v in plain)
        local, at, host = text_.rpartition("@") if "@" in text_ else (text_, "", "")
        out.append((comments[-1] if comments else None, None, local or MISSING_MAILBOX, host or MISSING_DOMAIN))

    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "s" and value == "<":
            j = i + 1
            inner: list[tuple[str, str]] = []
            while j < len(tokens) and tokens[j] != ("s", ">"):
                inner.append(tokens[j])
                j += 1
            # drop a source route "@a,@b:" (obsolete syntax) into adl
            adl = None
            colon = next((k for k, t in enumerate(inner) if t == ("s", ":")), None)
            if colon is not None:
                adl = "".join(v for _, v in inner[:colon])
                inner = inner[colon + 1:]
            spec = "".join(v for k, v in inner if k != "c")
            local, _, host = spec.rpartition("@") if "@" in spec else (spec, "", "")
            out.append((phrase(), adl, local or MISSING_MAILBOX, host or MISSING_DOMAIN))
            words = []
            i = j + 1
            continue
        if kind == "s" and value == ":" and not in_group and not any(t == ("s", "@") for t in words):
            out.append((None, None, phrase(), None))
            in_group = True
            words = []
            i += 1
            continue
        if kind == "s" and value in (",", ";"):
            flush_addr_spec(words)
            words = []
            if value == ";" and in_group:
                out.append((None, None, None, None))
                in_group = False
            i += 1
            continue
        if not words:
            first_word = i
        words.append((kind, value))
        i += 1
    flush_addr_spec(words)
    if in_group:
        out.append((None, None, None, None))
    return out


def address_list(value: str | None, utf8: bool = False) -> bytes:
    if not value:
        return NIL
    addresses = parse_addresses(value)
    if not addresses:
        return NIL
    # env-to = "(" 1*address ")": addresses follow each other without a space (RFC 9051 §9).
    return b"(" + b"".join(paren([string(x, utf8) if x is not None else NIL for x in a]) for a in addresses) + b")"


# --- ENVELOPE and BODYSTRUCTURE -------------------------------------------------------------

def _raw(headers: Message | None, name: str) -> str | None:
    value = field_value(headers, name)
    if value is None:
        return None
    return " ".join(value.split())  # unfold


def envelope(part: Part, utf8: bool = False) -> bytes:
    h = part.headers
    sender_from = _raw(h, "From")
    items = [
        nstring_or_nil(_raw(h, "Date"), utf8),
        nstring_or_nil(_raw(h, "Subject"), utf8),
        address_list(sender_from, utf8),
        address_list(_raw(h, "Sender") or sender_from, utf8),
        address_list(_raw(h, "Reply-To") or sender_from, utf8),
        address_list(_raw(h, "To"), utf8),
        address_list(_raw(h, "Cc"), utf8),
        address_list(_raw(h, "Bcc"), utf8),
        nstring_or_nil(_raw(h, "In-Reply-To"), utf8),
        nstring_or_nil(_raw(h, "Message-ID"), utf8),
    ]
    return paren(items)


def _params(params: list[tuple[str, str]], utf8: bool) -> bytes:
    if not params:
        return NIL
    return paren([x for k, v in params for x in (string(k.upper(), utf8), string(v, utf8))])


def _disposition(part: Part, utf8: bool) -> bytes:
    raw = part.header("Content-Disposition")
    if not raw:
        return NIL
    msg = Message()
    msg["Content-Disposition"] = without_comments(raw)
    params = msg.get_params(header="Content-Disposition") or []
    if not params:
        return NIL
    kind = params[0][0]
    rest = [(k, v if isinstance(v, str) else rfc2231(v)) for k, v in params[1:]]
    return paren([string(kind.upper(), utf8), _params(rest, utf8)])


def _language(part: Part, utf8: bool) -> bytes:
    raw = part.header("Content-Language")
    if not raw:
        return NIL
    tags = [t.strip() for t in raw.split(",") if t.strip()]
    return paren([string(t, utf8) for t in tags]) if tags else NIL


def bodystructure(part: Part, data: bytes, extensible: bool = True, utf8: bool = False,
                  rev2: bool = False) -> bytes:
    """BODYSTRUCTURE (``extensible``) or BODY of ``part``; ``data`` are the message octets
    (for sizes only: offsets are in the part).  A message/global part carries the
    encapsulated message's ENVELOPE, BODYSTRUCTURE and lines only for an IMAP4rev2 session:
    RFC 9051's media-message is ``"MESSAGE" ("RFC822" / "GLOBAL")``, RFC 3501's only
    ``"MESSAGE" "RFC822"``, so an IMAP4rev1 client parses message/global as body-type-basic
    (RFC 9051 §7.5.2 notes the answer differs between the two)."""
    if part.multipart:
        items = [b"".join(bodystructure(c, data, extensible, utf8, rev2) for c in part.children),
                 string(part.subtype.upper(), utf8)]
        if extensible:
            items += [_params(part.params, utf8), _disposition(part, utf8), _language(part, utf8),
                      nstring_or_nil(part.header("Content-Location"), utf8)]
        return b"(" + b" ".join(items) + b")"
    size = part.body_end - part.body_start
    encoding = (part.encoding or "7bit").upper()
    items = [string(part.maintype.upper(), utf8), string(part.subtype.upper(), utf8), _params(part.params, utf8),
             nstring_or_nil(part.header("Content-ID"), utf8), nstring_or_nil(part.header("Content-Description"), utf8),
             string(encoding, utf8), str(size).encode()]
    if part.message is not None and (rev2 or part.subtype == "rfc822"):
        items += [envelope(part.message, utf8), bodystructure(part.message, data, extensible, utf8, rev2),
                  str(part.lines).encode()]
    elif part.maintype == "text":
        items.append(str(part.lines).encode())
    if extensible:
        items += [nstring_or_nil(part.header("Content-MD5"), utf8), _disposition(part, utf8), _language(part, utf8),
                  nstring_or_nil(part.header("Content-Location"), utf8)]
    return paren(items)
