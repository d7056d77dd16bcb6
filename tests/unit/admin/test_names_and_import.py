"""Pure rules of tenant-safe names and migration imports: the fence, row comparison, the
password re-hash decision, import columns, the DNS verification token."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from colony import events as ev
from colony.bus import names
from colony.cli.provisioning import domain_app
from colony_admin import aggregates as agg
from colony_admin import importer, verification
from colony_admin.models import AccountCreate, AliasCreate, DomainCreate
from colony_admin.problems import AlreadyExists

DOMAIN = agg.fold(agg.create_domain(None, DomainCreate(name="acme.example")))


def test_the_fence_closes_the_other_kind_and_refuses_an_existing_one():
    fence = agg.fence_name(None, "other.example", names.AGG_DOMAIN)
    assert fence == [ev.DomainDeleted(domain="other.example", at=fence[0].at)]
    assert agg.fold(fence) is None  # a fence alone is "does not exist": a crash after it is harmless
    alias_fence = agg.fence_name(None, "other.example", names.AGG_DOMAIN_ALIAS)
    assert isinstance(alias_fence[0], ev.DomainAliasDeleted) and agg.fold(alias_fence) is None
    with pytest.raises(AlreadyExists, match="is a domain"):
        agg.fence_name(DOMAIN, "acme.example", names.AGG_DOMAIN)
    alias = agg.fold(agg.create_domain_alias(None, DOMAIN, "alt.example", "acme.example"))
    with pytest.raises(AlreadyExists, match="domain alias of acme.example"):
        agg.fence_name(alias, "alt.example", names.AGG_DOMAIN_ALIAS)


def test_a_fenced_name_can_still_be_created_as_its_own_kind():
    fenced = agg.fold(agg.fence_name(None, "n.example", names.AGG_DOMAIN))
    assert agg.create_domain(fenced, DomainCreate(name="n.example"))


def _account(**fields):
    events = agg.create_account(None, DOMAIN, "acme.example", AccountCreate(name="bob", **fields),
                                password_hash="{SSHA}x", sip_ha1={"MD5": "a" * 32}, cos_exists=True)
    return agg.fold(events)


def test_an_import_row_is_compared_only_on_the_columns_it_fills():
    state = _account(real_name="Bob", quota_bytes=10)
    assert agg.account_differences(state, "bob@acme.example", AccountCreate(name="bob")) == {}
    assert agg.account_differences(state, "bob@acme.example", AccountCreate(name="bob", real_name="Bob")) == {}
    assert agg.account_differences(state, "bob@acme.example",
                                   AccountCreate(name="bob", real_name="Robert", quota_bytes=10)) == {
        "real_name": "Robert"}
    alias = agg.fold(agg.create_alias(None, DOMAIN, "acme.example", AliasCreate(name="bob", targets=["x@y.example"])))
    with pytest.raises(AlreadyExists, match="alias"):
        agg.account_differences(alias, "bob@acme.example", AccountCreate(name="bob"))


def test_the_rehash_applies_only_to_the_hash_that_was_verified_and_keeps_imported_ha1():
    state = _account()
    events = agg.upgrade_password(state, "bob@acme.example", "{SSHA}x", "$argon2id$new", {"MD5": "derived"})
    assert [(e.password_hash, e.sip_ha1) for e in events] == [("$argon2id$new", {"MD5": "a" * 32})]
    changed_meanwhile = agg.apply(state, ev.AccountPasswordSet(address="bob@acme.example", password_hash="$argon2id$x"))
    assert agg.upgrade_password(changed_meanwhile, "bob@acme.example", "{SSHA}x", "$argon2id$new", {}) == []
    assert agg.upgrade_password(None, "bob@acme.example", "{SSHA}x", "$argon2id$new", {}) == []


def test_import_rows_carry_hashes_ha1_and_warn_about_weak_schemes():
    plan = importer.plan([
        {"domain": "a.example", "account": "one", "password_hash": "{SSHA}cC4CYCU4vzwjPlZEdrpcrLyy1ccK4Zzz",
         "sip_ha1_md5": "AB" * 16, "sip_realm": "a.example"},
        {"domain": "a.example", "account": "two", "password": "long enough", "password_hash": "$2y$04$" + "a" * 53},
        {"domain": "a.example", "account": "three", "sip_ha1_sha256": "c" * 64, "sip_realm": "b.example"},
        {"domain": "a.example", "account": "four", "password_hash": "{PLAIN}secret"},
    ])
    assert [r.account.name for r in plan.accounts] == ["one"]
    one = plan.accounts[0].account
    assert one.password_hash == "{SSHA}cC4CYCU4vzwjPlZEdrpcrLyy1ccK4Zzz" and one.sip_ha1.ha1() == {"MD5": "ab" * 16}
    assert plan.warnings == ["row 1: SSHA is a weak password scheme; re-hashed to argon2id at the account's next login"]
    assert [e.split(":")[0] for e in plan.errors] == ["row 2", "row 3", "row 4"]
    assert "not both" in plan.errors[0] and "realm" in plan.errors[1] and "password column" in plan.errors[2]


def test_the_cli_help_documents_every_import_column():
    result = CliRunner().invoke(domain_app, ["import", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    text = re.sub(r"[│\s]+", " ", result.output)
    for column in importer.KNOWN:
        assert f" {column} " in text, column
    assert "--update" in text and "unchanged" in text


def test_the_verification_token_binds_claimant_incarnation_and_name():
    tok = verification.token("acme.example", 12, "alt.example")
    assert re.fullmatch(r"[0-9a-f]{32}", tok)
    assert tok == verification.token("acme.example", 12, "alt.example")
    others = {verification.token("evil.example", 12, "alt.example"), verification.token("acme.example", 99, "alt.example"),
              verification.token("acme.example", 12, "other.example")}
    assert tok not in others and len(others) == 3
    assert verification.record_value(tok) == f"colony-verification={tok}"


def test_a_recreated_domain_is_a_new_incarnation():
    created = agg.create_domain(None, DomainCreate(name="acme.example"))[0]
    deleted = ev.DomainDeleted(domain="acme.example")
    assert agg.fold_with_incarnation([(3, created)])[1] == 3
    assert agg.fold_with_incarnation([(3, created), (9, deleted), (12, created)])[1] == 12
    assert agg.fold_with_incarnation([(3, created), (9, deleted)]) == (None, 0)
