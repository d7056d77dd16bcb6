"""The MIME torture corpus (``mime_torture.py``) APPENDed to a mail store's IMAP, directly and
through an edge, and every answer checked against what RFC 3501 / RFC 9051 call for
(``mime_torture.EXPECT``, judged by hand): BODYSTRUCTURE, ENVELOPE, BODY[n], BODY[n.MIME],
BODY[n.HEADER] / BODY[n.TEXT] of message parts, BINARY[n], BINARY.SIZE[n], RFC822.SIZE,
INTERNALDATE, SEARCH (HEADER, BODY, TEXT, FROM/TO/BCC with encoded-words, LARGER/SMALLER,
dates), SORT and THREAD.

``test_mime_torture_against_dovecot`` APPENDs the same messages to a private Dovecot (Debian's
dovecot-imapd, run by ``bench/peers.py``) and compares the two servers item by item, every
section of every part either names; a difference must be one judged in
``mime_torture.DOVECOT_DIFFERS`` (with the RFC text that decides it), so a new one fails the
test until somebody has judged it.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import sys
from pathlib import Path

import pytest

import mime_torture
from test_imap_mailstore import BOB, PASSWORD, imap, world  # noqa: F401  (fixtures)
from test_imap_state_machine import tokenize
from test_imapclient_livetest import _edge_imaps
from tools import free_ports, need_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from imap import Imap  # noqa: E402  (bench/imap.py: the minimal client)
from peers import Dovecot  # noqa: E402


MAILBOX = "Torture"
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n")


def responses(raw: bytes) -> list[list]:
    """A command's answer as one token list per response line (literals as bytes)."""
    out, pos = [], 0
    while pos < len(raw):
        text, literals = b"", []
        while True:
            end = raw.index(b"\r\n", pos) + 2
            line = raw[pos:end]
            m = _LITERAL.search(line)
            if m and m.end() == len(line):
                size = int(m.group(1))
                literals.append(raw[end:end + size])
                text += line[:m.start()] + b"\0%d\0" % (len(literals) - 1)
                pos = end + size
                continue
            text += line[:-2]
            pos = end
            break
        out.append(tokenize(text, literals))
    return out


class Client:
    """bench's ``Imap`` with answers kept when they are NO/BAD, and FETCH items picked out."""

    def __init__(self, imap_: Imap) -> None:
        self.imap = imap_

    @classmethod
    async def open(cls, port: int, user: str, password: str, tls: ssl.SSLContext | None = None) -> Client:
        c = cls(await Imap.open(port, tls))
        await c.imap.cmd(f'LOGIN "{user}" "{password}"')
        return c

    async def run(self, text: str, literal: bytes | None = None) -> tuple[str, list[list]]:
        """(status line, untagged responses)."""
        try:
            raw = await self.imap.cmd(text, literal)
        except RuntimeError as exc:
            return str(exc).split(" ", 1)[1] if " " in str(exc) else str(exc), []
        lines = responses(raw)
        return "OK", [r for r in lines if r and r[0] == "*"]

    async def fetch(self, seq: int, item: str) -> object:
        """One FETCH item's value, or the NO/BAD line."""
        status, lines = await self.run(f"FETCH {seq} ({item})")
        if status != "OK":
            return status
        want = re.sub(r"\.PEEK", "", item).upper()
        want = re.sub(r"<(\d+)\.\d+>$", r"<\1>", want)        # BODY[1]<2.5> is answered BODY[1]<2>
        for r in lines:
            if len(r) >= 4 and r[2] == "FETCH" and r[1] == str(seq):
                items = r[3]
                for k in range(0, len(items) - 1, 2):
                    if str(items[k]).upper() == want:
                        return items[k + 1]
        return f"(no {want} in the answer)"

    async def close(self) -> None:
        try:
            await self.imap.cmd("LOGOUT")
        except (RuntimeError, ConnectionError):
            pass
        self.imap.close()


def canonical(value: object) -> object:
    """A value with strings and literals alike (the wire form is the server's choice), a NO
    or BAD as its status and response code."""
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str) and re.match(r"(NO|BAD) ", value):
        return re.match(r"(NO|BAD)( \[[^\]]*\])?", value).group(0)
    return value


def show(value: object) -> object:
    """A structure written as on the wire, every string quoted (as ``EXPECT`` has them)."""
    if isinstance(value, list):
        return "(" + " ".join(show(v) for v in value) + ")"
    if value == "NIL" or re.fullmatch(r"\d+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sections(structure: list) -> list[tuple[str, bool, bool]]:
    """(section, is_leaf, is_message) of every part a BODYSTRUCTURE names (RFC 9051 §6.4.5)."""
    if structure and isinstance(structure[0], list):
        return [x for n, child in enumerate(_children(structure), 1) for x in _part(child, str(n))]
    return _part(structure, "1")


def _children(multipart: list) -> list[list]:
    """The parts of a multipart's BODYSTRUCTURE: the lists before its subtype."""
    end = next((i for i, c in enumerate(multipart) if not isinstance(c, list)), len(multipart))
    return multipart[:end]


def _part(part: list, section: str) -> list[tuple[str, bool, bool]]:
    if part and isinstance(part[0], list):
        return [(section, False, False)] + [x for n, child in enumerate(_children(part), 1)
                                            for x in _part(child, f"{section}.{n}")]
    message = (str(part[0]).upper(), str(part[1]).upper()) in (("MESSAGE", "RFC822"), ("MESSAGE", "GLOBAL"))
    out = [(section, True, message)]
    if message and len(part) > 8 and isinstance(part[8], list) and part[8]:
        inner = part[8]
        if isinstance(inner[0], list):
            out += [x for n, child in enumerate(_children(inner), 1) for x in _part(child, f"{section}.{n}")]
        else:
            out += _part(inner, f"{section}.1")
    return out


async def append_all(c: Client, mailbox: str = MAILBOX) -> None:
    status, _ = await c.run(f"CREATE {mailbox}")
    assert status == "OK", status
    status, _ = await c.run(f"SELECT {mailbox}")
    assert status == "OK", status
    for case in mime_torture.CASES:
        status, _ = await c.run(f'APPEND {mailbox} () "{case.internaldate}"', case.message)
        assert status == "OK", (case.name, status)
    await c.run("NOOP")


async def fetch_items(c: Client, seq: int, items) -> dict:
    return {item: canonical(await c.fetch(seq, item)) for item in items}


async def every_item(c: Client, seq: int) -> dict:
    """Every FETCH item of message ``seq``, sections for every part its BODYSTRUCTURE names."""
    items = await fetch_items(c, seq, ("BODYSTRUCTURE", "BODY", "ENVELOPE", "RFC822.SIZE", "INTERNALDATE",
                                       "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[]", "BINARY.SIZE[]",
                                       "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]",
                                       "BODY.PEEK[TEXT]<3.7>", "BINARY.PEEK[1]<2.4>", "BODY.PEEK[9]", "BODY.PEEK[1.9]",
                                       "BINARY.PEEK[9]", "BINARY.SIZE[9]", "BINARY.PEEK[2]", "BODY.PEEK[1.MIME]<0.10>"))
    structure = items["BODYSTRUCTURE"]
    for section, leaf, message in sections(structure) if isinstance(structure, list) else []:
        wanted = [f"BODY.PEEK[{section}]", f"BODY.PEEK[{section}.MIME]"]
        if leaf:
            wanted += [f"BINARY.PEEK[{section}]", f"BINARY.SIZE[{section}]"]
        if message:
            wanted += [f"BODY.PEEK[{section}.HEADER]", f"BODY.PEEK[{section}.TEXT]",
                       f"BODY.PEEK[{section}.HEADER.FIELDS (SUBJECT)]"]
        items.update(await fetch_items(c, seq, wanted))
    return items


async def queries(c: Client) -> dict:
    """SEARCH, SORT and THREAD answers, as case names."""
    names = [case.name for case in mime_torture.CASES]
    out: dict = {}
    for key in mime_torture.SEARCHES:
        status, lines = await c.run(f"SEARCH {key}")
        out[f"SEARCH {key}"] = status if status != "OK" else [
            names[int(x) - 1] for r in lines if len(r) > 1 and r[1] == "SEARCH" for x in r[2:]]
    for key in mime_torture.SORTS:
        status, lines = await c.run(f"SORT {key}")
        out[f"SORT {key}"] = status if status != "OK" else [
            names[int(x) - 1] for r in lines if len(r) > 1 and r[1] == "SORT" for x in r[2:]]

    def named(node):
        return [named(n) for n in node] if isinstance(node, list) else names[int(node) - 1]
    for key in mime_torture.THREADS:
        status, lines = await c.run(f"THREAD {key}")
        out[f"THREAD {key}"] = status if status != "OK" else [
            named(r[2:]) for r in lines if len(r) > 1 and r[1] == "THREAD"][0]
    return out


def _wanted(value: object) -> object:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


async def wrong_answers(c: Client) -> list[str]:
    """Every answer of the mailbox's messages that is not the one ``mime_torture`` expects."""
    wrong = []
    for seq, case in enumerate(mime_torture.CASES, 1):
        expected = mime_torture.EXPECT[case.name]
        got = await fetch_items(c, seq, expected)
        for item, value in expected.items():
            shown = show(got[item]) if isinstance(got[item], list) else got[item]
            if shown != _wanted(value):
                wrong.append(f"{case.name} {item}:\n  got      {shown!r}\n  expected {_wanted(value)!r}")
    answers = await queries(c)
    for table, prefix in ((mime_torture.SEARCHES, "SEARCH"), (mime_torture.SORTS, "SORT"),
                          (mime_torture.THREADS, "THREAD")):
        for key, value in table.items():
            if answers[f"{prefix} {key}"] != value:
                wrong.append(f"{prefix} {key}:\n  got      {answers[f'{prefix} {key}']!r}\n  expected {value!r}")
    return wrong


async def _torture(port: int, tls: ssl.SSLContext | None = None) -> list[str]:
    c = await Client.open(port, BOB, PASSWORD, tls)
    try:
        await append_all(c)
        return await wrong_answers(c)
    finally:
        await c.close()


async def test_mime_torture_answers_are_the_rfcs(imap):
    _world, _host, port, _view, _secret = imap
    wrong = await _torture(port)
    assert not wrong, f"{len(wrong)} answers differ from mime_torture.EXPECT:\n" + "\n".join(wrong)


async def test_mime_torture_in_imap4rev2_and_a_nul_in_a_header(imap):
    """After ENABLE IMAP4rev2 message/global is a body-type-msg (RFC 9051 §7.5.2); and a NUL in
    a header field, which no Content-Transfer-Encoding can carry, is refused on APPEND (a
    literal holds no NUL, RFC 3501 §9; RFC 3516 §4.4's UNKNOWN-CTE) and nothing is stored."""
    _world, _host, port, _view, _secret = imap
    c = await Client.open(port, BOB, PASSWORD)
    try:
        status, _ = await c.run("ENABLE IMAP4rev2")
        assert status == "OK", status
        await c.run("CREATE Rev2")
        for case in mime_torture.CASES:
            if case.name in mime_torture.EXPECT_REV2:
                status, _ = await c.run(f'APPEND Rev2 () "{case.internaldate}"', case.message)
                assert status == "OK", status
        status, _ = await c.run("SELECT Rev2")
        assert status == "OK", status
        for seq, (name, expected) in enumerate(mime_torture.EXPECT_REV2.items(), 1):
            for item, value in expected.items():
                assert show(canonical(await c.fetch(seq, item))) == value, (name, item)
        status, _ = await c.run("APPEND Rev2 ()", mime_torture.NUL_IN_HEADER)
        assert status.startswith("NO [UNKNOWN-CTE]"), status
        status, lines = await c.run("STATUS Rev2 (MESSAGES)")
        assert ["*", "STATUS", "Rev2", ["MESSAGES", str(len(mime_torture.EXPECT_REV2))]] in lines, lines
    finally:
        await c.close()


async def test_mime_torture_answers_through_the_edge(imap, tmp_path):
    """The same answers through an edge's IMAPS (LOGIN there, the session handed to the store and
    its octets relayed): literals with 8-bit octets and NULs (BINARY) must cross whole."""
    world, _host, _port, _view, secret = imap
    async with _edge_imaps(world, secret, tmp_path) as (imaps_port, client):
        wrong = await _torture(imaps_port, client)
    assert not wrong, f"{len(wrong)} answers differ from mime_torture.EXPECT:\n" + "\n".join(wrong)


def differences(a: dict, b: dict) -> list[tuple[str, str, object, object]]:
    out = []
    for key in a:
        x, y = a[key], b.get(key)
        if isinstance(x, dict):
            for item in sorted(set(x) | set(y or {})):
                vx, vy = x.get(item), (y or {}).get(item)
                if _folded(vx) != _folded(vy):
                    out.append((key, item, vx, vy))
        elif x != y:
            out.append((key, "", x, y))
    return out


def _folded(value: object) -> object:
    """Case folded where IMAP leaves case to the server: media types, subtypes, parameter names
    and encodings in BODYSTRUCTURE (RFC 2045 §5.1, §6.1) -- Dovecot sends them in lower case."""
    if isinstance(value, list):
        return [_folded(v) for v in value]
    return value.upper() if isinstance(value, str) else value


def judged(key: str, item: str) -> str | None:
    for case, pattern, why in mime_torture.DOVECOT_DIFFERS:
        if re.fullmatch(case, key) and re.fullmatch(pattern, item):
            return why
    return None


async def test_mime_torture_against_dovecot(imap, tmp_path):
    need_tool("dovecot", "dovecot-core")
    need_tool("/usr/lib/dovecot/imap", "dovecot-imapd")
    need_tool("/usr/lib/dovecot/lmtp", "dovecot-lmtpd")          # bench/peers.py's instance listens for LMTP too
    if os.geteuid() != 0:
        pytest.skip("Dovecot is started as root and drops to its own users (as bench/peers.py runs it)")
    _world, _host, port, _view, _secret = imap
    lmtp_port, imap_port = free_ports(2)
    dovecot = Dovecot(tmp_path, lmtp_port, imap_port)
    await asyncio.to_thread(dovecot.start)
    try:
        answers = []
        for port_, user, password in ((port, BOB, PASSWORD), (imap_port, "torture@example.org", dovecot.password)):
            c = await Client.open(port_, user, password)
            try:
                await append_all(c)
                got = {case.name: await every_item(c, seq) for seq, case in enumerate(mime_torture.CASES, 1)}
                got.update(await queries(c))
                answers.append(got)
            finally:
                await c.close()
    finally:
        await asyncio.to_thread(dovecot.stop)
    unjudged = [f"{key} {item}:\n  colony  {x!r}\n  dovecot {y!r}"[:1200]
                for key, item, x, y in differences(*answers) if judged(key, item) is None]
    assert not unjudged, (f"{len(unjudged)} differences from Dovecot nobody has judged (mime_torture.DOVECOT_DIFFERS):\n"
                          + "\n".join(unjudged))
