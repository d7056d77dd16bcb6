"""An account's vacation in the directory contract: parsed into ``AccountEntry`` and the
directory cache's ``AccountInfo``; absent (older writers) or unreadable, it is no vacation
and the account itself still parses."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from colony.bus import names
from colony.contracts import directory
from colony.contracts.cache import DirectoryIndex

ACCOUNT = {"kind": "account", "address": "amy@acme.example", "domain": "acme.example", "name": "amy",
           "state": "active", "seq": 4}
AWAY = {"enabled": True, "subject": None, "body": "Away.", "start": "2026-12-24T08:00:00Z", "end": None,
        "days": 3, "addresses": ["sales@acme.example"]}


def test_the_entry_and_the_cache_carry_the_vacation():
    entry = directory.parse_entry(orjson.dumps({**ACCOUNT, "vacation": AWAY}))
    assert entry.vacation.start == datetime(2026, 12, 24, 8, tzinfo=UTC) and entry.vacation.days == 3
    assert entry.info().vacation == entry.vacation
    ix = DirectoryIndex()
    key = names.directory_key("address", "amy@acme.example")
    ix.apply(key, orjson.dumps({**ACCOUNT, "vacation": AWAY}))
    info = ix.address("amy@acme.example")
    assert info.vacation.body == "Away." and info.vacation.addresses == ("sales@acme.example",)
    ix.apply(key, orjson.dumps({**ACCOUNT, "vacation": None}))
    assert ix.address("amy@acme.example").vacation is None


def test_no_vacation_from_older_writers_or_an_unreadable_one():
    assert directory.parse_entry(orjson.dumps(ACCOUNT)).vacation is None
    ix = DirectoryIndex()
    key = names.directory_key("address", "amy@acme.example")
    ix.apply(key, orjson.dumps(ACCOUNT))
    assert ix.address("amy@acme.example").vacation is None
    ix.apply(key, orjson.dumps({**ACCOUNT, "vacation": {"days": "often"}}))
    info = ix.address("amy@acme.example")
    assert info is not None and info.state == "active" and info.vacation is None and ix.bad_entries == 0


@pytest.mark.parametrize("vacation", [{"days": 0, "body": "x"}, {"start": "soon", "body": "x"}, "yes", [1]])
def test_a_vacation_that_does_not_parse_leaves_the_mail_stores_account_entry_whole(vacation):
    # The mail store reads AccountEntry (parse_entry), not the edges' AccountInfo: a bad
    # vacation there made the account unreadable, so its mail and logins failed at the store.
    entry = directory.parse_entry(orjson.dumps({**ACCOUNT, "vacation": vacation}))
    assert isinstance(entry, directory.AccountEntry) and entry.address == "amy@acme.example" and entry.vacation is None


def test_a_vacation_period_without_an_offset_is_utc_as_the_wire_says():
    entry = directory.parse_entry(orjson.dumps({**ACCOUNT, "vacation": {"body": "x", "start": "2026-12-24T00:00:00"}}))
    assert entry.vacation.start == datetime(2026, 12, 24, tzinfo=UTC)
    ix = DirectoryIndex()
    ix.apply(names.directory_key("address", "amy@acme.example"),
             orjson.dumps({**ACCOUNT, "vacation": {"body": "x", "end": "2027-01-04T08:00:00"}}))
    assert ix.address("amy@acme.example").vacation.end == datetime(2027, 1, 4, 8, tzinfo=UTC)
