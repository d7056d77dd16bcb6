"""Bulk-import parsing and model validation (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from colony.bus import names
from colony_admin import importer
from colony_admin.models import AccountCreate, DomainCreate, check_address
from colony_admin.projections.directory import directory_entry, parse_subject, subject_entry
from colony_admin.queries import decode_cursor, encode_cursor
from colony_admin.problems import BadRequest


def test_csv_plan_groups_domains_and_reports_row_errors():
    body = ("domain,account,password,services,quota_bytes\n"
            "Acme.Example,alice,longpassword,mail;imap,100\n"
            "acme.example,bob@acme.example,,,\n"
            "acme.example,eve@other.example,,,\n"
            "beta.example,,,,\n"
            "bad domain,x,,,\n").encode()
    plan = importer.plan(importer.parse(body, "csv"))
    assert list(plan.domains) == ["acme.example", "beta.example"]
    assert [(a.domain, a.account.name) for a in plan.accounts] == [("acme.example", "alice"), ("acme.example", "bob")]
    assert plan.accounts[0].account.services == ["mail", "imap"] and plan.accounts[0].account.quota_bytes == 100
    assert [e.split(":")[0] for e in plan.errors] == ["row 3", "row 5"]


def test_json_and_format_errors():
    plan = importer.plan(importer.parse(b'{"rows": [{"domain": "a.example", "account": "x", "password_hash": "plain"}]}', "json"))
    assert plan.errors and "argon2" in plan.errors[0]
    with pytest.raises(importer.ImportFormatError):
        importer.parse(b"account\nx\n", "csv")
    with pytest.raises(importer.ImportFormatError):
        importer.parse(b"{}", "json")
    with pytest.raises(importer.ImportFormatError):
        importer.parse(b"\xff", "json")


def test_hostile_files_are_format_errors_not_crashes():
    """A CSV cell over the csv module's limit and JSON nested past the decoder's recursion
    were a 500 with a traceback; they are the import's own 400."""
    with pytest.raises(importer.ImportFormatError, match="after line 1: field larger"):
        importer.parse(b"domain,real_name\nbig.example," + b"a" * 200_000 + b"\n", "csv")
    with pytest.raises(importer.ImportFormatError, match="nested"):
        importer.parse(b"[" * 100_000 + b"]" * 100_000, "json")


def test_names_are_normalised_and_checked():
    assert DomainCreate(name=" B\u00fccher.Example. ").name == "xn--bcher-kva.example"
    assert check_address("Alice@ACME.example") == "alice@acme.example"
    for bad in ("", "-x.example", "x", "a..b"):
        with pytest.raises(ValidationError):
            DomainCreate(name=bad)
    with pytest.raises(ValidationError):
        AccountCreate(name="has space")
    with pytest.raises(ValidationError):
        AccountCreate(name="ok", password="short")


def test_cursor_round_trip_and_garbage():
    assert decode_cursor(encode_cursor("user042@x.example")) == "user042@x.example"
    with pytest.raises(BadRequest):
        decode_cursor("!!!")


def test_directory_entries_hide_secrets_and_mark_deletions():
    key, value = directory_entry("address", "a@b.example", {"kind": "account", "password_hash": "h", "sip_ha1": {},
                                                            "services": ["mail"]}, 7)
    assert key == "address.a_40b_2eexample" and value == {"kind": "account", "services": ["mail"], "seq": 7}
    assert directory_entry("domain", "b.example", None, 9)[1] == {"deleted": True, "seq": 9}
    assert directory_entry("token", "x", {"secret_sha256": "h"}, 1) is None
    assert parse_subject("colony.prov.address.a_40b_2eexample") == ("address", "a@b.example")


def test_a_directory_value_with_an_integer_beyond_64_bits_is_still_written():
    """Such an event may be in PROVISIONING from before the API refused it; orjson refused to
    encode it and the projector stopped at it for good."""
    import json

    from colony_admin.projections.directory import _json

    _, value = directory_entry("address", "a@b.example", {"kind": "account", "quota_bytes": 10**30}, 7)
    assert json.loads(_json(value)) == {"kind": "account", "quota_bytes": 10**30, "seq": 7}
    assert _json({"seq": 1}) == b'{"seq":1}'


@pytest.mark.parametrize("kind,name", [("address", "a@b.example"), ("domain", "xn--bcher-kva.example"),
                                       ("address", "odd_name+tag@b.example"), ("domain_alias", "Ünïcode.example"),
                                       ("cos", "gold plan/2"), ("token", "x"), ("domain_move", "b.example")])
def test_an_entry_keyed_from_the_subject_is_the_entry_keyed_from_the_name(kind, name):
    """The projection's hot path takes the key from the event's subject without decoding the
    name: the same key and value as from the name, for any name the encoder escapes."""
    state = {"kind": kind, "name": name, "password_hash": "h"}
    subject = names.provisioning_subject(kind, name)
    assert subject_entry(subject, state, 3) == directory_entry(kind, name, state, 3)
    assert subject_entry(subject, None, 4) == directory_entry(kind, name, None, 4)


def test_patch_null_clears_only_clearable_fields():
    from colony_admin.models import AccountPatch, DomainPatch

    assert AccountPatch(real_name=None, cos=None, quota_bytes=None, state=None).changes() == {"cos": None,
                                                                                            "quota_bytes": None}
    assert DomainPatch(branding=None, cos=None).changes() == {"cos": None}
    assert AccountPatch().changes() == {}


def test_a_row_sets_only_the_cells_it_fills():
    """Empty cells and missing columns set nothing; lists, SIP columns and falsy values that
    are not empty (0, false) are taken, in JSON as in CSV."""
    rows = [{"domain": "a.example", "account": "x", "real_name": "", "quota_bytes": 0, "forward_keep_copy": False,
             "services": "mail imap", "forwarding": ["y@b.example"], "sip_ha1_md5": "0" * 32, "sip_realm": "",
             "cos": None},
            {"domain": "a.example", "account": "z", "sip_ha1_md5": "1" * 32, "sip_realm": "a.example"},
            {"domain": "a.example", "account": "w", "sip_ha1_md5": "2" * 32, "sip_realm": "b.example"},
            {"domain": "a.example", "account": "v", "colour": "red"}]
    plan = importer.plan(rows)
    x, z = (row.account for row in plan.accounts)
    assert x.model_fields_set == {"name", "quota_bytes", "forward_keep_copy", "services", "forwarding", "sip_ha1"}
    assert (x.quota_bytes, x.forward_keep_copy, x.services, x.forwarding) == (0, False, ["mail", "imap"], ["y@b.example"])
    assert x.sip_ha1.md5 == "0" * 32 and x.sip_ha1.realm is None and z.sip_ha1.realm == "a.example"
    assert [e.split(":")[0] for e in plan.errors] == ["row 3", "row 4"]
    assert "realm b.example" in plan.errors[0] and "unknown column(s) ['colour']" in plan.errors[1]
    csv_plan = importer.plan(importer.parse(b"domain,account,real_name,services,sip_ha1_md5\n"
                                            b"a.example,x,,mail;sip,\n", "csv"))
    (only,) = csv_plan.accounts
    assert only.account.model_fields_set == {"name", "services"} and only.account.services == ["mail", "sip"]


def test_a_number_beyond_64_bits_sent_as_text_is_refused_too():
    """The 64-bit check ran before parsing, when a number sent as text (a JSON string, every
    CSV cell of a bulk import) is still a str: 10**30 as text became an int past it, and the
    projection then skipped (PostgreSQL) or stalled on (SQLite) the account's event."""
    from colony_admin.models import CosLimits

    huge = str(10**30)
    with pytest.raises(ValidationError, match="64|numbers must lie"):
        AccountCreate(name="huge", quota_bytes=huge)
    with pytest.raises(ValidationError, match="numbers must lie"):
        CosLimits.model_validate_json('{"max_message_bytes": "%s"}' % huge)
    plan = importer.plan(importer.parse(f"domain,account,quota_bytes\nacme.example,huge,{huge}\n"
                                        f"acme.example,fine,{2**63 - 1}\n".encode(), "csv"))
    assert [a.account.name for a in plan.accounts] == ["fine"] and plan.accounts[0].account.quota_bytes == 2**63 - 1
    assert len(plan.errors) == 1 and plan.errors[0].startswith("row 1: ") and "numbers must lie" in plan.errors[0]
