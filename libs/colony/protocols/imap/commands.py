"""IMAP commands as typed values: the grammar of RFC 9051 §6 / RFC 3501 §6 and of the
extensions Colony implements, read from a framed ``Command`` with ``syntax.Cursor``.

``parse_command(command)`` returns one of the dataclasses below or raises ``ParseError``
(answer ``<tag> BAD <why>``); the tag is read first, so even a bad command can be answered
with its own tag (``ParseError.tag``).  Nothing here knows about sessions or mailboxes:
whether a command is allowed in the current state is the rules' business.

Mailbox names come back as ``bytes`` as the client sent them; the session decodes them
(modified UTF-7 unless UTF8=ACCEPT / IMAP4rev2 is enabled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from colony.protocols.imap.reader import Command, Literal
from colony.protocols.imap.syntax import MAX_NUMBER64, Cursor, ParseError, SequenceSet


class CommandError(ParseError):
    def __init__(self, tag: str, message: str) -> None:
        super().__init__(message)
        self.tag = tag


# --- the commands ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Simple:
    """CAPABILITY, NOOP, LOGOUT, STARTTLS, NAMESPACE, IDLE, CHECK, CLOSE, UNSELECT, EXPUNGE."""
    tag: str
    name: str


@dataclass(frozen=True)
class Login:
    tag: str
    user: bytes
    password: bytes


@dataclass(frozen=True)
class Authenticate:
    tag: str
    mechanism: str
    initial: bytes | None = None      # SASL-IR, still base64 ("=" is an empty response)


@dataclass(frozen=True)
class Enable:
    tag: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Compress:
    """``COMPRESS <mechanism>`` (RFC 4978; ``DEFLATE`` is the only one defined)."""
    tag: str
    mechanism: str


@dataclass(frozen=True)
class Id:
    tag: str
    params: tuple[tuple[bytes, bytes | None], ...] | None


@dataclass(frozen=True)
class Select:
    tag: str
    name: str                         # SELECT or EXAMINE
    mailbox: bytes
    condstore: bool = False
    qresync: tuple | None = None      # (uidvalidity, modseq, known_uids | None, (seqs, uids) | None)


@dataclass(frozen=True)
class MailboxCommand:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT, GETACL, MYRIGHTS."""
    tag: str
    name: str
    mailbox: bytes
    special_use: tuple[str, ...] = ()      # CREATE ... (USE (\\Sent))


@dataclass(frozen=True)
class Rename:
    tag: str
    old: bytes
    new: bytes


@dataclass(frozen=True)
class ListCommand:
    tag: str
    name: str                          # LIST or LSUB
    reference: bytes
    patterns: tuple[bytes, ...]
    selection: tuple[str, ...] = ()    # SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE
    returns: tuple[str, ...] = ()      # SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS
    status_items: tuple[str, ...] = ()  # RETURN (STATUS (...))
    extended: bool = False             # any LIST-EXTENDED syntax was used


@dataclass(frozen=True)
class Status:
    tag: str
    mailbox: bytes
    items: tuple[str, ...]


@dataclass(frozen=True)
class AppendMessage:
    flags: tuple[str, ...]
    date: datetime | None
    data: bytes
    binary: bool = False


@dataclass(frozen=True)
class Append:
    tag: str
    mailbox: bytes
    messages: tuple[AppendMessage, ...]     # MULTIAPPEND: one or more


@dataclass(frozen=True)
class Quota:
    """GETQUOTA root / SETQUOTA root (resource limit ...)."""
    tag: str
    name: str
    root: bytes
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Acl:
    """SETACL mailbox identifier rights / DELETEACL mailbox identifier / LISTRIGHTS mailbox identifier."""
    tag: str
    name: str
    mailbox: bytes
    identifier: bytes
    rights: bytes | None = None


# Search keys: a tree.  ("ALL",), ("FLAG", "\\Seen"), ("HEADER", "subject", "x"), ("SEQ", set),
# ("UID", set), ("LARGER", n), ("BEFORE", date), ("MODSEQ", n), ("NOT", key), ("OR", a, b),
# ("AND", (keys...)).
SearchKey = tuple


@dataclass(frozen=True)
class Search:
    tag: str
    uid: bool
    charset: str | None
    criteria: SearchKey
    returns: tuple[str, ...] | None = None      # ESEARCH RETURN (...); None: plain SEARCH


@dataclass(frozen=True)
class Sort:
    tag: str
    uid: bool
    criteria: tuple[tuple[bool, str], ...]      # (reverse, key) with key ARRIVAL, CC, DATE, FROM, SIZE, SUBJECT, TO
    charset: str
    search: SearchKey
    returns: tuple[str, ...] | None = None      # ESORT RETURN (...) (RFC 5267 §3); None: plain SORT


@dataclass(frozen=True)
class Thread:
    tag: str
    uid: bool
    algorithm: str
    charset: str
    search: SearchKey


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute.  ``section``: (part numbers, text, header field names) for
    BODY[...]/BINARY[...]; ``partial``: (offset, length)."""
    name: str                    # FLAGS, UID, ENVELOPE, BODY, BODY.PEEK, BINARY, BINARY.PEEK, BINARY.SIZE, ...
    section: tuple[tuple[int, ...], str | None, tuple[str, ...]] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Fetch:
    tag: str
    uid: bool
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class Store:
    tag: str
    uid: bool
    sequence: SequenceSet
    mode: str                    # "+", "-" or "" (replace)
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class CopyMove:
    tag: str
    name: str                    # COPY or MOVE
    uid: bool
    sequence: SequenceSet
    mailbox: bytes


@dataclass(frozen=True)
class UidExpunge:
    tag: str
    sequence: SequenceSet


ImapCommand = (Simple | Login | Authenticate | Enable | Compress | Id | Select | MailboxCommand | Rename | ListCommand
               | Status | Append | Quota | Acl | Search | Sort | Thread | Fetch | Store | CopyMove | UidExpunge)

_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")
_ITEM_NAME = re.compile(rb"[A-Za-z0-9.]+")
_FETCH_WORD = re.compile(rb"[A-Za-z0-9.\[\]<>]+")

SIMPLE = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "NAMESPACE", "IDLE", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE"}
STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ",
                "APPENDLIMIT", "DELETED-STORAGE"}
FETCH_MACROS = {"ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
                "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
                "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")}
FETCH_SIMPLE = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID", "RFC822",
                "RFC822.HEADER", "RFC822.TEXT", "MODSEQ", "SAVEDATE", "EMAILID", "THREADID"}
SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
MAX_SEARCH_DEPTH = 64


def _mod_list(c: Cursor, allowed: dict) -> dict:
    """`` (NAME value ...)`` modifier lists (CONDSTORE's CHANGEDSINCE and friends)."""
    out: dict = {}
    c.expect(b"(")
    while not c.accept(b")"):
        if out:
            c.sp()
        name = c.keyword()
        if name not in allowed:
            raise ParseError(f"unknown modifier {name}")
        out[name] = allowed[name](c)
    return out


def _modseq(c: Cursor) -> int:
    c.sp()
    return c.number("a mod-sequence", MAX_NUMBER64)


# --- entry point -------------------------------------------------------------------------------

def parse_command(command: Command) -> ImapCommand:
    c = Cursor(command)
    try:
        tag = c.atom("a tag").decode("ascii", "replace")
    except ParseError:
        raise CommandError("*", "Missing or invalid tag") from None
    if "+" in tag:
        raise CommandError("*", "A tag may not contain '+'")
    try:
        c.sp()
        name = c.keyword()
        result = _dispatch(c, tag, name)
        c.end()
        return result
    except CommandError:
        raise
    except ParseError as exc:
        raise CommandError(tag, str(exc)) from None
    except ValueError:       # octets no reader above expected (a text that is not UTF-8...)
        raise CommandError(tag, "Syntax error") from None


def _dispatch(c: Cursor, tag: str, name: str) -> ImapCommand:
    if name in SIMPLE:
        return Simple(tag, name)
    if name == "UID":
        c.sp()
        sub = c.keyword()
        if sub in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD"):
            return _dispatch_selected(c, tag, sub, uid=True)
        if sub == "EXPUNGE":
            c.sp()
            return UidExpunge(tag, c.sequence_set())
        raise ParseError(f"UID {sub} is not a command")
    if name in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD"):
        return _dispatch_selected(c, tag, name, uid=False)
    handler = _HANDLERS.get(name)
    if handler is None:
        raise ParseError(f"unknown command {name[:30]}")
    return handler(c, tag, name)


def _dispatch_selected(c: Cursor, tag: str, name: str, uid: bool) -> ImapCommand:
    return {"FETCH": _fetch, "STORE": _store, "COPY": _copy_move, "MOVE": _copy_move, "SEARCH": _search,
            "SORT": _sort, "THREAD": _thread}[name](c, tag, name, uid)


# --- not authenticated / any -----------------------------------------------------------------

def _login(c: Cursor, tag: str, name: str) -> Login:
    c.sp()
    user = c.astring("a user name")
    c.sp()
    return Login(tag, user, c.astring("a password"))


def _authenticate(c: Cursor, tag: str, name: str) -> Authenticate:
    c.sp()
    mechanism = c.atom("a SASL mechanism").decode("ascii", "replace").upper()
    initial = None
    if c.accept(b" "):
        initial = c.take_rest()    # SASL-IR: the rest of the line (base64, or "=" for empty)
        if not _BASE64.fullmatch(initial):
            raise ParseError("the initial response must be base64 or '='")
    return Authenticate(tag, mechanism, initial)


def _enable(c: Cursor, tag: str, name: str) -> Enable:
    caps = []
    while c.accept(b" "):
        caps.append(c.atom("a capability").decode("ascii", "replace").upper())
    if not caps:
        raise ParseError("ENABLE needs at least one capability")
    return Enable(tag, tuple(caps))


def _compress(c: Cursor, tag: str, name: str) -> Compress:
    c.sp()
    return Compress(tag, c.atom("a compression mechanism").decode("ascii", "replace").upper())


def _id(c: Cursor, tag: str, name: str) -> Id:
    c.sp()
    if c.accept(b"NIL"):
        return Id(tag, None)
    pairs = []
    c.expect(b"(")
    while not c.accept(b")"):
        if pairs:
            c.sp()
        key = c.string()
        c.sp()
        pairs.append((key, c.nstring()))
        if len(pairs) > 30:
            raise ParseError("too many ID fields (RFC 2971 allows 30)")
    return Id(tag, tuple(pairs))


# --- authenticated -----------------------------------------------------------------------------

def _select(c: Cursor, tag: str, name: str) -> Select:
    c.sp()
    mailbox = c.mailbox()
    condstore = False
    qresync = None
    if c.accept(b" "):
        c.expect(b"(")
        first = True
        while not c.accept(b")"):
            if not first:
                c.sp()
            first = False
            param = c.keyword()
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                c.sp()
                c.expect(b"(")
                uidvalidity = c.nz_number("a UIDVALIDITY")
                c.sp()
                modseq = c.number("a mod-sequence", MAX_NUMBER64)
                known = match = None
                if c.accept(b" "):
                    if c.peek() != b"(":
                        known = c.sequence_set()       # known-uids
                        if not c.accept(b" "):
                            c.expect(b")")
                            qresync = (uidvalidity, modseq, known, None)
                            continue
                    c.expect(b"(")                     # seq-match-data
                    seqs = c.sequence_set()
                    c.sp()
                    uids = c.sequence_set()
                    c.expect(b")")
                    match = (seqs, uids)
                c.expect(b")")
                qresync = (uidvalidity, modseq, known, match)
            else:
                raise ParseError(f"unknown SELECT parameter {param}")
    return Select(tag, name, mailbox, condstore, qresync)


def _mailbox_command(c: Cursor, tag: str, name: str) -> MailboxCommand:
    c.sp()
    mailbox = c.mailbox()
    special: list[str] = []
    if name == "CREATE" and c.accept(b" "):
        c.expect(b"(")
        c.expect(b"USE", "USE")
        c.sp()
        special = [f for f in c.flag_list()]
        c.expect(b")")
    return MailboxCommand(tag, name, mailbox, tuple(special))


def _rename(c: Cursor, tag: str, name: str) -> Rename:
    c.sp()
    old = c.mailbox()
    c.sp()
    return Rename(tag, old, c.mailbox())


def _list(c: Cursor, tag: str, name: str) -> ListCommand:
    c.sp()
    selection: list[str] = []
    extended = False
    if name == "LIST" and c.peek() == b"(":
        extended = True
        selection = [x.decode("ascii", "replace").upper() for x in c.paren_list(lambda k: k.atom("a selection option"))]
    if extended:
        c.sp()
    reference = c.astring("a reference name")
    c.sp()
    patterns: list[bytes]
    if name == "LIST" and c.peek() == b"(":
        extended = True
        patterns = c.paren_list(lambda k: k.list_mailbox())
    else:
        patterns = [c.list_mailbox()]
    returns: list[str] = []
    status_items: list[str] = []
    if name == "LIST" and c.accept(b" "):
        extended = True
        c.expect(b"RETURN", "RETURN")
        c.sp()
        c.expect(b"(")
        while not c.accept(b")"):
            if returns:
                c.sp()
            option = c.keyword()
            returns.append(option)
            if option == "STATUS":
                c.sp()
                status_items = [x.decode("ascii", "replace").upper() for x in c.paren_list(lambda k: k.atom("a status item"))]
                bad = set(status_items) - STATUS_ITEMS
                if bad:
                    raise ParseError(f"unknown STATUS item {sorted(bad)[0]}")
    return ListCommand(tag, name, reference, tuple(patterns), tuple(selection), tuple(returns), tuple(status_items),
                       extended)


def _status(c: Cursor, tag: str, name: str) -> Status:
    c.sp()
    mailbox = c.mailbox()
    c.sp()
    items = [x.decode("ascii", "replace").upper() for x in c.paren_list(lambda k: k.atom("a status item"))]
    bad = set(items) - STATUS_ITEMS
    if bad or not items:
        raise ParseError(f"unknown STATUS item {sorted(bad)[0]}" if bad else "STATUS needs items")
    return Status(tag, mailbox, tuple(items))


def _append(c: Cursor, tag: str, name: str) -> Append:
    c.sp()
    mailbox = c.mailbox()
    messages = []
    while c.accept(b" "):
        flags: list[str] = []
        date = None
        if c.peek() == b"(":
            flags = c.flag_list()
            c.sp()
        if c.peek() == b'"':
            date = c.date_time()
            c.sp()
        binary = c.peek() == b"~"
        if c.accept(b"UTF8"):           # RFC 6855: UTF8 (literal8)
            c.sp()
            c.expect(b"(")
            literal = c.literal()
            c.expect(b")")
        else:
            literal = c.literal()
        if not isinstance(literal, Literal):
            raise ParseError("expected the message as a literal")
        messages.append(AppendMessage(tuple(flags), date, literal.data, binary or literal.binary))
    if not messages:
        raise ParseError("APPEND needs a message")
    return Append(tag, mailbox, tuple(messages))


def _quota(c: Cursor, tag: str, name: str) -> Quota:
    c.sp()
    root = c.astring("a quota root")
    limits: list[tuple[str, int]] = []
    if name == "SETQUOTA":
        c.sp()
        c.expect(b"(")
        while not c.accept(b")"):
            if limits:
                c.sp()
            resource = c.keyword()
            c.sp()
            limits.append((resource, c.number("a limit", MAX_NUMBER64)))
    return Quota(tag, name, root, tuple(limits))


def _acl(c: Cursor, tag: str, name: str) -> Acl | MailboxCommand:
    c.sp()
    mailbox = c.mailbox()
    if name in ("GETACL", "MYRIGHTS"):
        return MailboxCommand(tag, name, mailbox)
    c.sp()
    identifier = c.astring("an identifier")
    rights = None
    if name == "SETACL":
        c.sp()
        rights = c.astring("rights")
    return Acl(tag, name, mailbox, identifier, rights)


# --- selected ----------------------------------------------------------------------------------

def _section(c: Cursor) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    """section-spec inside [...]: part numbers, then HEADER / HEADER.FIELDS[.NOT] (list) / TEXT / MIME."""
    numbers: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    while c.peek().isdigit():
        numbers.append(c.nz_number("a part number"))
        if not c.accept(b"."):
            break
    if c.peek() not in (b"]",):
        text = c.atom("a section name").decode("ascii", "replace").upper()
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            c.sp()
            fields = tuple(x.decode("utf-8", "replace") for x in c.paren_list(lambda k: k.astring("a header name")))
            if not fields:
                raise ParseError("HEADER.FIELDS needs field names")
        elif text not in ("HEADER", "TEXT", "MIME"):
            raise ParseError(f"unknown section {text[:30]}")
        if text == "MIME" and not numbers:
            raise ParseError("MIME needs a part number")
    return tuple(numbers), text, fields


def _fetch_item(c: Cursor) -> FetchItem:
    name = c.match(_ITEM_NAME, "a fetch item").decode().upper()
    if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and c.accept(b"["):
        section = _section(c)
        c.expect(b"]")
        if name.startswith("BINARY") and section[1] is not None:
            raise ParseError("BINARY takes part numbers only")
        partial = None
        if name != "BINARY.SIZE" and c.accept(b"<"):
            offset = c.number("a partial offset")
            c.expect(b".")
            length = c.nz_number("a partial length")
            c.expect(b">")
            partial = (offset, length)
        return FetchItem(name, section, partial)
    if name in ("BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        raise ParseError(f"{name} needs a section")
    if name not in FETCH_SIMPLE:
        raise ParseError(f"unknown fetch item {name[:30]}")
    return FetchItem(name)


def _fetch(c: Cursor, tag: str, name: str, uid: bool) -> Fetch:
    c.sp()
    sequence = c.sequence_set()
    c.sp()
    if c.peek() == b"(":
        items = c.paren_list(_fetch_item)
        if not items:
            raise ParseError("empty fetch item list")
    else:
        mark = c.save()
        word = c.match(_FETCH_WORD, "fetch items").upper().decode("ascii", "replace")
        if word in FETCH_MACROS:
            items = [FetchItem(x) for x in FETCH_MACROS[word]]
        else:
            c.restore(mark)
            items = [_fetch_item(c)]
    changed_since = None
    vanished = False
    if c.accept(b" "):
        mods = _mod_list(c, {"CHANGEDSINCE": _modseq, "VANISHED": lambda k: True})
        changed_since = mods.get("CHANGEDSINCE")
        vanished = "VANISHED" in mods
        if vanished and (not uid or changed_since is None):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    if uid and not any(i.name == "UID" for i in items):
        items.append(FetchItem("UID"))
    return Fetch(tag, uid, sequence, tuple(items), changed_since, vanished)


def _store(c: Cursor, tag: str, name: str, uid: bool) -> Store:
    c.sp()
    sequence = c.sequence_set()
    c.sp()
    unchanged = None
    if c.peek() == b"(":
        unchanged = _mod_list(c, {"UNCHANGEDSINCE": _modseq}).get("UNCHANGEDSINCE")
        c.sp()
    mode = ""
    if c.accept(b"+"):
        mode = "+"
    elif c.accept(b"-"):
        mode = "-"
    item = c.atom("FLAGS").decode("ascii", "replace").upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise ParseError("expected FLAGS or FLAGS.SILENT")
    c.sp()
    if c.peek() == b"(":
        flags = c.flag_list()
    else:
        flags = [c.flag()]
        while c.accept(b" "):
            flags.append(c.flag())
    if "\\Recent" in flags:
        raise ParseError("\\Recent cannot be stored")
    return Store(tag, uid, sequence, mode, item.endswith(".SILENT"), tuple(flags), unchanged)


def _copy_move(c: Cursor, tag: str, name: str, uid: bool) -> CopyMove:
    c.sp()
    sequence = c.sequence_set()
    c.sp()
    return CopyMove(tag, name, uid, sequence, c.mailbox())


def _charset_and_keys(c: Cursor) -> tuple[str | None, SearchKey]:
    charset = None
    if c.accept(b"CHARSET "):
        charset = c.astring("a charset").decode("ascii", "replace").upper()
        c.sp()
    keys = [_search_key(c, 0)]
    while c.accept(b" "):
        keys.append(_search_key(c, 0))
    return charset, keys[0] if len(keys) == 1 else ("AND", tuple(keys))


def _return_options(c: Cursor) -> tuple[str, ...] | None:
    """``RETURN (...) SP`` of an ESEARCH SEARCH or ESORT SORT (RFC 4731, RFC 5267), if any."""
    if not c.accept(b"RETURN "):
        return None
    returns = tuple(x.decode("ascii", "replace").upper() for x in c.paren_list(lambda k: k.atom("a return option")))
    bad = set(returns) - {"MIN", "MAX", "ALL", "COUNT", "SAVE"}
    if bad:
        raise ParseError(f"unknown RETURN option {sorted(bad)[0]}")
    c.sp()
    return returns


def _search(c: Cursor, tag: str, name: str, uid: bool) -> Search:
    c.sp()
    returns = _return_options(c)
    charset, criteria = _charset_and_keys(c)
    return Search(tag, uid, charset, criteria, returns)


def _sort(c: Cursor, tag: str, name: str, uid: bool) -> Sort:
    c.sp()
    returns = _return_options(c)
    criteria: list[tuple[bool, str]] = []
    c.expect(b"(")
    reverse = False
    while not c.accept(b")"):
        if criteria or reverse:
            c.sp()
        key = c.keyword()
        if key == "REVERSE":
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise ParseError(f"unknown sort key {key[:20]}")
        criteria.append((reverse, key))
        reverse = False
    if not criteria or reverse:
        raise ParseError("expected sort criteria")
    c.sp()
    charset = c.astring("a charset").decode("ascii", "replace").upper()
    c.sp()
    keys = [_search_key(c, 0)]
    while c.accept(b" "):
        keys.append(_search_key(c, 0))
    return Sort(tag, uid, tuple(criteria), charset, keys[0] if len(keys) == 1 else ("AND", tuple(keys)), returns)


def _thread(c: Cursor, tag: str, name: str, uid: bool) -> Thread:
    c.sp()
    algorithm = c.keyword()
    c.sp()
    charset = c.astring("a charset").decode("ascii", "replace").upper()
    c.sp()
    keys = [_search_key(c, 0)]
    while c.accept(b" "):
        keys.append(_search_key(c, 0))
    return Thread(tag, uid, algorithm, charset, keys[0] if len(keys) == 1 else ("AND", tuple(keys)))


_NO_ARG = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED",
           "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
_STRING_ARG = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_ARG = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUMBER_ARG = {"LARGER", "SMALLER", "OLDER", "YOUNGER"}


def _search_key(c: Cursor, depth: int) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise ParseError("search criteria nested too deeply")
    if c.accept(b"("):
        keys = [_search_key(c, depth + 1)]
        while c.accept(b" "):
            keys.append(_search_key(c, depth + 1))
        c.expect(b")")
        return keys[0] if len(keys) == 1 else ("AND", tuple(keys))
    if c.peek().isdigit() or c.peek() in (b"*", b"$"):
        return ("SEQ", c.sequence_set())
    key = c.keyword()
    if key in _NO_ARG:
        return (key,)
    c.sp()
    if key in _STRING_ARG:
        return (key, c.astring("a search string"))
    if key in _DATE_ARG:
        return (key, c.date())
    if key in _NUMBER_ARG:
        return (key, c.number("a number"))
    if key in ("KEYWORD", "UNKEYWORD"):
        return (key, c.flag())
    if key == "HEADER":
        field_name = c.astring("a header name")
        c.sp()
        return (key, field_name.decode("utf-8", "replace"), c.astring("a search string"))
    if key == "UID":
        return (key, c.sequence_set())
    if key == "NOT":
        return (key, _search_key(c, depth + 1))
    if key == "OR":
        a = _search_key(c, depth + 1)
        c.sp()
        return (key, a, _search_key(c, depth + 1))
    if key == "MODSEQ":
        # MODSEQ [entry-name entry-type-req] mod-sequence-valzer (RFC 7162 §3.1.5)
        if c.peek() == b'"':
            entry = c.quoted()
            c.sp()
            kind = c.keyword()
            if kind not in ("PRIV", "SHARED", "ALL"):
                raise ParseError("expected priv, shared or all")
            c.sp()
            return (key, c.number("a mod-sequence", MAX_NUMBER64), entry.decode("utf-8", "replace"), kind)
        return (key, c.number("a mod-sequence", MAX_NUMBER64))
    raise ParseError(f"unknown search key {key[:30]}")


_HANDLERS = {
    "LOGIN": _login, "AUTHENTICATE": _authenticate, "ENABLE": _enable, "ID": _id, "COMPRESS": _compress,
    "SELECT": _select, "EXAMINE": _select,
    "CREATE": _mailbox_command, "DELETE": _mailbox_command, "SUBSCRIBE": _mailbox_command,
    "UNSUBSCRIBE": _mailbox_command, "GETQUOTAROOT": _mailbox_command,
    "RENAME": _rename, "LIST": _list, "LSUB": _list, "STATUS": _status, "APPEND": _append,
    "GETQUOTA": _quota, "SETQUOTA": _quota,
    "GETACL": _acl, "MYRIGHTS": _acl, "SETACL": _acl, "DELETEACL": _acl, "LISTRIGHTS": _acl,
}
