"""SEARCH keys, SORT and THREAD (RFC 9051 §6.4.4, RFC 5256) over in-memory messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from colony.protocols.imap import commands as C
from colony.protocols.imap.reader import CommandReader
from colony.protocols.imap.search import (
    BadCharset, SearchContext, base_subject, check_charset, format_threads, search, sort, thread_orderedsubject,
    thread_references,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


@dataclass
class Msg:
    seq: int
    uid: int
    headers: dict
    body: str = ""
    flags: frozenset = frozenset()
    size: int = 100
    internal_date: datetime = T0
    modseq: int = 1

    def header(self, name: str):
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None

    def headers_text(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers.items())

    def body_text(self) -> str:
        return self.body


def criteria(text: str):
    reader = CommandReader()
    reader.receive_data(f"t SEARCH {text}\r\n".encode())
    return C.parse_command(reader.next_event()).criteria


MSGS = [
    Msg(1, 10, {"From": "Alice <alice@example.com>", "Subject": "Invoice March", "Date": "Fri, 1 Mar 2024 09:00:00 +0000"},
        "please pay", frozenset({"\\Seen"}), 500, T0, 5),
    Msg(2, 11, {"From": "=?utf-8?q?J=C3=B6rg?= <j@example.de>", "Subject": "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
                "To": "bob@example.com", "X-Spam": "yes"}, "Hallo Welt", frozenset({"\\Flagged", "$Label1"}), 2000,
        T0 + timedelta(days=1), 9),
    Msg(3, 15, {"From": "carol@example.org", "Subject": "Re: Invoice March", "Cc": "alice@example.com"}, "paid",
        frozenset({"\\Deleted", "\\Seen"}), 50, T0 + timedelta(days=2), 12),
]


def uids(text: str, **ctx) -> list[int]:
    context = SearchContext(highest_seq=3, highest_uid=15, now=T0 + timedelta(days=3), **ctx)
    return [m.uid for m in search(MSGS, criteria(text), context)]


def test_flags_sizes_sets_and_logic():
    assert uids("ALL") == [10, 11, 15]
    assert uids("SEEN") == [10, 15] and uids("UNSEEN") == [11]
    assert uids("FLAGGED") == [11] and uids("KEYWORD $label1") == [11] and uids("UNKEYWORD $Label1") == [10, 15]
    assert uids("LARGER 100") == [10, 11] and uids("SMALLER 100") == [15]
    assert uids("2:*") == [11, 15] and uids("UID 11:*") == [11, 15] and uids("UID 12:14") == []
    assert uids("OR FLAGGED DELETED") == [11, 15] and uids("NOT SEEN") == [11]
    assert uids("(SEEN LARGER 100)") == [10] and uids("SEEN LARGER 100") == [10]
    assert uids("MODSEQ 9") == [11, 15]


def test_dates():
    assert uids("SINCE 2-Mar-2024") == [11, 15] and uids("BEFORE 2-Mar-2024") == [10] and uids("ON 3-Mar-2024") == [15]
    assert uids("SENTON 1-Mar-2024") == [10] and uids("SENTSINCE 2-Mar-2024") == [11, 15]  # no Date: internal date
    assert uids("YOUNGER 200000") == [11, 15] and uids("OLDER 200000") == [10]


def test_strings_are_decoded_and_case_insensitive():
    assert uids('FROM "JÖRG"') == [11]                     # encoded-word decoded, case folded
    assert uids('SUBJECT "grüße"') == [11]
    assert uids("SUBJECT invoice") == [10, 15]
    assert uids("BODY PAY") == [10] and uids("TEXT alice") == [10, 15]
    assert uids('HEADER X-Spam ""') == [11] and uids("HEADER X-Spam no") == []
    assert uids("CC alice") == [15] and uids("TO bob") == [11]


def test_a_folded_field_is_searched_unfolded():
    """RFC 5322 §2.2.3: a folded field means the same with each CRLF before white space removed;
    RFC 9051 §6.4.4 SUBJECT/HEADER match that, also where no encoded-word is in the field."""
    folded = [Msg(1, 20, {"Subject": "quarterly\r\n report for\r\n\tMarch", "X-Tag": "alpha\r\n beta"})]
    ctx = SearchContext(highest_seq=1, highest_uid=20, now=T0)
    assert [m.uid for m in search(folded, criteria('SUBJECT "quarterly report"'), ctx)] == [20]
    assert [m.uid for m in search(folded, criteria('SUBJECT "for\tmarch"'), ctx)] == [20]
    assert [m.uid for m in search(folded, criteria('HEADER X-Tag "alpha beta"'), ctx)] == [20]
    assert search(folded, criteria('SUBJECT "quarterlyreport"'), ctx) == []     # the white space stays


def test_saved_results_and_charsets():
    assert uids("$", saved_uids=frozenset({11})) == [11]
    check_charset("utf-8")
    with pytest.raises(BadCharset):
        check_charset("ISO-2022-JP")


def test_base_subject_rfc5256():
    assert base_subject("Re: [list] Fwd: Hello (fwd)") == "hello"
    assert base_subject("RE:re: hello   world") == "hello world"
    assert base_subject("[Fwd: [list] test]") == "test"
    assert base_subject("[only a blob]") == "[only a blob]"
    assert base_subject("=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=") == "grüsse"   # i;unicode-casemap folds ß


def test_sort():
    by_subject = sort(MSGS, ((False, "SUBJECT"), (False, "ARRIVAL")))
    assert [m.uid for m in by_subject] == [11, 10, 15]          # grüße < invoice march (x2, by arrival)
    assert [m.uid for m in sort(MSGS, ((True, "SIZE"),))] == [11, 10, 15]
    assert [m.uid for m in sort(MSGS, ((False, "FROM"),))] == [10, 15, 11]


def test_threads():
    msgs = [
        Msg(1, 1, {"Message-ID": "<a@x>", "Subject": "Plan", "Date": "Mon, 1 Jan 2024 10:00:00 +0000"}),
        Msg(2, 2, {"Message-ID": "<b@x>", "References": "<a@x>", "Subject": "Re: Plan",
                   "Date": "Mon, 1 Jan 2024 11:00:00 +0000"}),
        Msg(3, 3, {"Message-ID": "<c@x>", "Subject": "Other", "Date": "Mon, 1 Jan 2024 09:00:00 +0000"}),
        Msg(4, 4, {"Message-ID": "<d@x>", "References": "<a@x> <b@x>", "Subject": "Re: Plan",
                   "Date": "Mon, 1 Jan 2024 12:00:00 +0000"}),
        Msg(5, 5, {"Message-ID": "<e@x>", "In-Reply-To": "<missing@x>", "Subject": "Re: Plan",
                   "Date": "Mon, 1 Jan 2024 13:00:00 +0000"}),
        Msg(6, 6, {"Message-ID": "<f@x>", "References": "<a@x>", "Subject": "Re: Plan",
                   "Date": "Mon, 1 Jan 2024 14:00:00 +0000"}),
    ]
    refs = thread_references(msgs)
    # 5 replies to a message we do not have: its dummy parent goes, and its subject joins it to 1
    assert format_threads(refs, lambda m: m.seq) == "(3)(1 (2 4)(5)(6))"
    ordered = thread_orderedsubject(msgs)
    assert format_threads(ordered, lambda m: m.seq) == "(3)(1 (2)(4)(5)(6))"


def test_threads_thousands_deep():
    # One message whose References names 3,000 ancestors (anyone can mail it), and a chain of
    # 3,000 replies each branching off a leaf: the tree walks recursed that deep and THREAD
    # REFERENCES raised RecursionError (a traceback, the account reopened, for every THREAD).
    refs = " ".join(f"<r{i}@x>" for i in range(3000))
    one = [Msg(1, 1, {"Message-ID": "<m@x>", "References": refs, "Subject": "s"})]
    assert format_threads(thread_references(one), lambda m: m.seq) == "(1)"
    deep, n = [], 3000
    for i in range(n):
        parent = {"In-Reply-To": f"<c{i - 1}@x>"} if i else {}
        deep.append(Msg(2 * i + 1, 2 * i + 1, {"Message-ID": f"<c{i}@x>", "Subject": "s", **parent},
                        internal_date=T0 + timedelta(seconds=2 * i)))
        deep.append(Msg(2 * i + 2, 2 * i + 2, {"Message-ID": f"<l{i}@x>", "In-Reply-To": f"<c{i}@x>", "Subject": "s"},
                        internal_date=T0 + timedelta(seconds=2 * i + 1)))
    text = format_threads(thread_references(deep), lambda m: m.seq)
    assert text.startswith("(1 (2)(3 (4)(5 ") and text.count("(") == text.count(")") == 2 * n - 1


def test_base_subject_of_a_long_run_of_blobs_is_linear():
    # Each round removed one leading [blob] after a leader match that failed across all of
    # them: "[a]" x 8,000 cost 2 s, the 256 KiB a header field may hold ~4 minutes, at every
    # SORT SUBJECT or THREAD of a mailbox holding it (anyone may mail it).
    import time
    started = time.process_time()
    assert base_subject("[a]" * 85_000 + "x") == "x"
    assert base_subject("[a] " * 60_000) == "[a]"
    assert base_subject("[list] Re: [a][b] fwd: Hello (fwd)") == "hello"
    assert time.process_time() - started < 2


def test_threads_from_references_deeper_than_any_walk_cut_lose_no_message():
    # The loop check walked at most 10,000 levels up: a References chain deeper than that,
    # then naming its first ID again, was linked into a loop that no root reached, and the
    # message was missing from THREAD's answer (RFC 5256: every message is in a thread).
    n = 12_000
    refs = " ".join(f"<r{i}@x>" for i in range(n)) + " <r0@x>"
    one = [Msg(1, 1, {"Message-ID": "<m@x>", "References": refs, "Subject": "s"}),
           Msg(2, 2, {"Message-ID": "<o@x>", "Subject": "other"})]
    assert sorted(format_threads(thread_references(one), lambda m: m.seq).strip("()").split(")(")) == ["1", "2"]


def test_threads_of_a_references_header_made_to_walk_a_deep_chain_again_and_again():
    # '<r0>' then a deep chain, then '<r0> <deepest>' pairs: each pair walked the whole chain
    # to refuse a loop (9,000 levels x 9,000 pairs, the 256 KiB of one header field: tens of
    # seconds of CPU for every THREAD REFERENCES of the mailbox). Bounded now; nothing lost.
    import time
    deep = 9_000
    refs = " ".join(f"<r{i}@x>" for i in range(deep)) + f" <r0@x> <r{deep - 1}@x>" * 9_000
    assert len(refs) < 256 * 1024
    msgs = [Msg(1, 1, {"Message-ID": "<m@x>", "References": refs, "Subject": "s"})]
    started = time.process_time()
    assert format_threads(thread_references(msgs), lambda m: m.seq) == "(1)"
    assert time.process_time() - started < 5
