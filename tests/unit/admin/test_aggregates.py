"""The pure aggregate rules: fold and decide, no sockets."""

from __future__ import annotations

import pytest

from colony import events as ev
from colony_admin import aggregates as agg
from colony_admin.models import AccountCreate, AliasCreate, CosCreate, DomainCreate, DomainState, Role, TokenCreate
from colony_admin.problems import AlreadyExists, Conflict, Invalid, MoveRequired, NotFound


def test_domain_lifecycle_folds_to_the_expected_state():
    created = agg.create_domain(None, DomainCreate(name="Acme.Example.", branding={"display_name": "Acme"}))
    state = agg.fold(created)
    assert state["name"] == "acme.example" and state["state"] == "active"
    assert state["branding"]["display_name"] == "Acme"
    upd = agg.update_domain(state, "acme.example", {"home_region": "eu", "cos": None}, has_accounts=False)
    assert [type(e) for e in upd] == [ev.DomainUpdated] and upd[0].changes == {"home_region": "eu"}
    state = agg.fold(created + upd)
    suspended = agg.set_domain_state(state, "acme.example", DomainState.SUSPENDED, "unpaid")
    state = agg.fold(created + upd + suspended)
    assert state["state"] == "suspended"
    assert agg.set_domain_state(state, "acme.example", DomainState.SUSPENDED) == []  # idempotent
    with pytest.raises(Conflict):
        agg.delete_domain(state, "acme.example", has_addresses=True)
    assert agg.fold(created + agg.delete_domain(state, "acme.example", has_addresses=False)) is None


def test_rehoming_a_domain_with_accounts_is_refused_and_names_the_move():
    state = agg.fold(agg.create_domain(None, DomainCreate(name="a.example", home_region="eu")))
    with pytest.raises(MoveRequired) as refused:
        agg.update_domain(state, "a.example", {"home_region": "us"}, has_accounts=True)
    problem = refused.value
    assert problem.status == 409 and problem.body()["type"].endswith("/domain-move-required")
    assert problem.extra["operation"] == "/v1/domains/a.example/move" and problem.extra["home_region"] == "eu"
    assert "colony domain move a.example" in problem.detail
    # the same region again is no change, and other settings of a populated domain still change
    assert agg.update_domain(state, "a.example", {"home_region": "eu"}, has_accounts=True) == []
    assert agg.update_domain(state, "a.example", {"cos": "gold"}, has_accounts=True)[0].changes == {"cos": "gold"}
    # an empty domain has no mailboxes to leave behind
    assert agg.update_domain(state, "a.example", {"home_region": "us"}, has_accounts=False)[0].changes == \
        {"home_region": "us"}


def test_events_round_trip_through_the_wire_form():
    for event in agg.create_domain(None, DomainCreate(name="a.example")):
        assert ev.decode(event.encode()) == event


def test_creating_twice_is_already_exists_and_updates_need_an_aggregate():
    state = agg.fold(agg.create_domain(None, DomainCreate(name="a.example")))
    with pytest.raises(AlreadyExists):
        agg.create_domain(state, DomainCreate(name="a.example"))
    with pytest.raises(NotFound):
        agg.update_domain(None, "b.example", {"cos": "x"}, has_accounts=False)


def test_accounts_and_aliases_share_one_namespace():
    domain = agg.fold(agg.create_domain(None, DomainCreate(name="a.example")))
    alias = agg.fold(agg.create_alias(None, domain, "a.example", AliasCreate(name="info", targets=["x@b.example"])))
    with pytest.raises(AlreadyExists):
        agg.create_account(alias, domain, "a.example", AccountCreate(name="info"), password_hash=None, sip_ha1={},
                           cos_exists=True)
    with pytest.raises(NotFound):
        agg.update_account(alias, "info@a.example", {"real_name": "x"})
    with pytest.raises(NotFound):
        agg.create_account(None, None, "nope.example", AccountCreate(name="x"), password_hash=None, sip_ha1={},
                           cos_exists=True)
    with pytest.raises(Invalid):
        agg.create_alias(None, domain, "a.example", AliasCreate(name="loop", targets=["loop@a.example"]))


def test_account_update_and_password_set():
    domain = agg.fold(agg.create_domain(None, DomainCreate(name="a.example")))
    created = agg.create_account(None, domain, "a.example", AccountCreate(name="Bob", real_name="B"),
                                 password_hash=None, sip_ha1={}, cos_exists=True)
    state = agg.fold(created)
    assert state["address"] == "bob@a.example"
    events = agg.update_account(state, "bob@a.example", {"real_name": "B", "quota_bytes": 5}, password_hash="$argon2id$x",
                                sip_ha1={"MD5": "h"})
    assert [type(e) for e in events] == [ev.AccountUpdated, ev.AccountPasswordSet]
    assert events[0].changes == {"quota_bytes": 5}  # unchanged fields are not events
    state = agg.fold(created + events)
    assert state["password_hash"] == "$argon2id$x" and state["sip_ha1"] == {"MD5": "h"}
    with pytest.raises(Invalid):
        agg.create_account(None, domain, "a.example", AccountCreate(name="c", cos="gold"), password_hash=None,
                           sip_ha1={}, cos_exists=False)


def test_cos_and_tokens():
    cos = agg.fold(agg.create_cos(None, CosCreate(name="gold")))
    assert cos["limits"]["services"] == ["mail", "imap", "pop", "sip"]
    with pytest.raises(Conflict):
        agg.delete_cos(cos, "gold", in_use=True)
    with pytest.raises(Invalid):
        agg.create_token(None, "t" * 16, TokenCreate(name="x", role=Role.DOMAIN_ADMIN), "h", "me")
    with pytest.raises(Invalid):
        agg.create_token(None, "t" * 16, TokenCreate(name="x", role=Role.BILLING_READER, domain="a.example"), "h", "me")
    token = agg.fold(agg.create_token(None, "t" * 16, TokenCreate(name="x", role=Role.SYSTEM_ADMIN), "h", "me"))
    revoked = agg.apply(token, agg.revoke_token(token, "t" * 16)[0])
    assert revoked["revoked"] and agg.revoke_token(revoked, "t" * 16) == []
