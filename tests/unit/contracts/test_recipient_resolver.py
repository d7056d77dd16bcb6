"""The pure recipient resolver: aliases, domain aliases, forwarding, loops and bounds."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.bus import names
from colony.contracts.cache import DirectoryIndex
from colony.contracts.recipients import (
    Accepted,
    Limits,
    Mailbox,
    Refusal,
    Refused,
    account_limits,
    normalise_address,
    resolve,
)


class Dir(DirectoryIndex):
    """A directory built the way the bucket is: key + JSON value, through DirectoryIndex.apply."""

    def put(self, key_kind: str, key_name: str, **value) -> Dir:
        self.apply(names.directory_key(key_kind, key_name), orjson.dumps(value))
        return self

    def domain_(self, name: str, state: str = "active", region: str = "eu", cos: str | None = None) -> Dir:
        return self.put("domain", name, kind="domain", name=name, state=state, home_region=region, cos=cos)

    def account(self, address: str, state: str = "active", forwarding=(), keep_copy: bool = False,
                services=None, cos=None) -> Dir:
        local, _, domain = address.partition("@")
        return self.put("address", address, kind="account", address=address, domain=domain, name=local,
                        state=state, forwarding=list(forwarding), forward_keep_copy=keep_copy, services=services,
                        cos=cos)

    def alias(self, address: str, *targets: str) -> Dir:
        local, _, domain = address.partition("@")
        return self.put("address", address, kind="alias", address=address, domain=domain, name=local,
                        targets=list(targets))


def mailboxes(r) -> list[str]:
    assert isinstance(r, Accepted), r
    return [m.address for m in r.mailboxes]


@pytest.fixture
def d() -> Dir:
    return Dir().domain_("acme.example").domain_("beta.example", region="us").account("amy@acme.example") \
        .account("bob@beta.example")


def test_an_account_is_its_own_mailbox_with_its_domain_home_region(d):
    r = resolve(d, "Amy@ACME.example")
    assert r == Accepted("Amy@ACME.example", (Mailbox("amy@acme.example", "acme.example", "eu"),), ())
    assert resolve(d, "bob@beta.example").mailboxes[0].home_region == "us"


def test_mail_for_a_moving_domain_goes_to_the_target_from_routing_on(d):
    """Asked for, the move changes nothing yet; from routing on new mail goes to the target
    region's stores (the fast path and the expansion alike), and after the move to the new home."""
    d.alias("team@acme.example", "amy@acme.example")
    for phase, region in [("requested", "eu"), ("routing", "us"), ("copying", "us"), ("sealing", "us"),
                          ("flipped", "us"), ("done", "eu"), ("cancelled", "eu")]:
        d.put("domain", "acme.example", kind="domain", name="acme.example", state="active", home_region="eu",
              move={"move_id": "m1", "source": "eu", "target": "us", "phase": phase})
        assert resolve(d, "amy@acme.example").mailboxes[0].home_region == region, phase
        assert resolve(d, "team@acme.example").mailboxes[0].home_region == region, phase


def test_unknown_user_and_unhosted_domain(d):
    r = resolve(d, "nobody@acme.example")
    assert isinstance(r, Refused) and r.reason is Refusal.UNKNOWN_USER
    assert (r.code, r.status) == (550, "5.1.1") and r.smtp_reply().startswith("550 5.1.1 ")
    r = resolve(d, "amy@elsewhere.example")
    assert r.reason is Refusal.NOT_LOCAL and (r.code, r.status) == (550, "5.7.1")


def test_bad_syntax_is_501():
    for bad in ("no-at-sign", "@acme.example", "amy@", "a b@acme.example", "x" * 65 + "@acme.example",
                "amy@acme.example\r\n"):
        r = resolve(Dir(), bad)
        assert r.reason is Refusal.BAD_ADDRESS and r.code == 501, bad


def test_suspended_domain_and_disabled_account(d):
    d.domain_("acme.example", state="suspended")
    r = resolve(d, "amy@acme.example")
    assert r.reason is Refusal.DOMAIN_SUSPENDED and (r.code, r.status) == (450, "4.2.1")
    d.domain_("acme.example").account("amy@acme.example", state="disabled")
    r = resolve(d, "amy@acme.example")
    assert r.reason is Refusal.ACCOUNT_DISABLED and (r.code, r.status) == (550, "5.2.1")


def test_mail_must_be_in_the_account_services_and_its_class(d):
    d.account("amy@acme.example", services=["imap"])
    assert resolve(d, "amy@acme.example").reason is Refusal.MAIL_NOT_ENABLED
    d.put("cos", "voice", kind="cos", name="voice", limits={"services": ["sip"]})
    d.account("amy@acme.example", cos="voice")
    assert resolve(d, "amy@acme.example").reason is Refusal.MAIL_NOT_ENABLED
    d.domain_("acme.example", cos="voice").account("amy@acme.example")  # the domain's class applies
    assert resolve(d, "amy@acme.example").reason is Refusal.MAIL_NOT_ENABLED


def test_domain_alias_maps_to_the_real_domain(d):
    d.put("domain_alias", "acme-mail.example", kind="domain_alias", name="acme-mail.example", domain="acme.example")
    assert mailboxes(resolve(d, "amy@acme-mail.example")) == ["amy@acme.example"]
    assert resolve(d, "nobody@acme-mail.example").reason is Refusal.UNKNOWN_USER
    # alias targets in an aliased domain resolve too
    d.alias("team@beta.example", "amy@acme-mail.example")
    assert mailboxes(resolve(d, "team@beta.example")) == ["amy@acme.example"]


def test_alias_chain_expands_to_final_mailboxes_once_each(d):
    d.account("cy@acme.example")
    d.alias("all@acme.example", "team@acme.example", "bob@beta.example", "amy@acme.example")
    d.alias("team@acme.example", "amy@acme.example", "cy@acme.example")
    assert mailboxes(resolve(d, "all@acme.example")) == ["amy@acme.example", "cy@acme.example", "bob@beta.example"]


def test_alias_to_remote_address_is_listed_for_outbound(d):
    d.alias("ext@acme.example", "someone@gmail.example", "amy@acme.example")
    r = resolve(d, "ext@acme.example")
    assert mailboxes(r) == ["amy@acme.example"] and r.remote == ("someone@gmail.example",)


def test_alias_skips_unusable_targets_and_refuses_only_when_nothing_is_left(d):
    d.account("off@acme.example", state="disabled")
    d.alias("mixed@acme.example", "off@acme.example", "ghost@acme.example", "amy@acme.example")
    assert mailboxes(resolve(d, "mixed@acme.example")) == ["amy@acme.example"]
    d.alias("dead@acme.example", "off@acme.example", "ghost@acme.example")
    assert resolve(d, "dead@acme.example").reason is Refusal.ACCOUNT_DISABLED  # the first refusal met


def test_forwarding_without_and_with_a_copy(d):
    d.account("amy@acme.example", forwarding=["bob@beta.example", "amy@gmail.example"])
    r = resolve(d, "amy@acme.example")
    assert mailboxes(r) == ["bob@beta.example"] and r.remote == ("amy@gmail.example",)
    d.account("amy@acme.example", forwarding=["bob@beta.example"], keep_copy=True)
    assert sorted(mailboxes(resolve(d, "amy@acme.example"))) == ["amy@acme.example", "bob@beta.example"]


def test_loops_are_refused_when_nothing_else_is_reached(d):
    d.alias("a@acme.example", "b@acme.example")
    d.alias("b@acme.example", "a@acme.example")
    r = resolve(d, "a@acme.example")
    assert r.reason is Refusal.LOOP and (r.code, r.status) == (550, "5.4.6")
    d.account("amy@acme.example", forwarding=["bob@beta.example"])
    d.account("bob@beta.example", forwarding=["amy@acme.example"])
    assert resolve(d, "amy@acme.example").reason is Refusal.LOOP
    # a loop beside a real mailbox still delivers to the mailbox
    d.alias("c@acme.example", "c2@acme.example", "cy@acme.example")
    d.alias("c2@acme.example", "c@acme.example")
    d.account("cy@acme.example")
    assert mailboxes(resolve(d, "c@acme.example")) == ["cy@acme.example"]


def test_forwarding_loop_with_a_kept_copy_delivers_the_copies(d):
    d.account("amy@acme.example", forwarding=["bob@beta.example"], keep_copy=True)
    d.account("bob@beta.example", forwarding=["amy@acme.example"], keep_copy=True)
    assert sorted(mailboxes(resolve(d, "amy@acme.example"))) == ["amy@acme.example", "bob@beta.example"]


def test_depth_is_bounded(d):
    chain = [f"hop{i}@acme.example" for i in range(15)]
    for a, b in zip(chain, chain[1:]):
        d.alias(a, b)
    d.alias(chain[-1], "amy@acme.example")
    assert resolve(d, chain[0], Limits(max_depth=20)).ok
    assert resolve(d, chain[0], Limits(max_depth=10)).reason is Refusal.LOOP  # too deep counts as a loop


def test_fan_out_is_bounded(d):
    targets = [f"u{i}@acme.example" for i in range(50)]
    for t in targets:
        d.account(t)
    d.alias("many@acme.example", *targets)
    assert len(resolve(d, "many@acme.example", Limits(max_results=50)).mailboxes) == 50
    r = resolve(d, "many@acme.example", Limits(max_results=49))
    assert r.reason is Refusal.TOO_MANY and (r.code, r.status) == (550, "5.5.3")


def test_diamonds_of_aliases_cannot_blow_up(d):
    # 20 levels of two aliases each pointing at both of the next level: 2**20 paths, 40 names
    for level in range(20):
        for side in "ab":
            d.alias(f"l{level}{side}@acme.example", f"l{level + 1}a@acme.example", f"l{level + 1}b@acme.example")
    d.alias("l20a@acme.example", "amy@acme.example")
    d.alias("l20b@acme.example", "amy@acme.example")
    r = resolve(d, "l0a@acme.example", Limits(max_depth=30, max_steps=5000))
    assert r.reason is Refusal.TOO_MANY


def test_account_limits_follow_the_class_of_service(d):
    d.put("cos", "gold", kind="cos", name="gold", limits={"services": ["mail", "imap"], "quota_bytes": 100,
                                                          "max_message_bytes": 10})
    d.domain_("acme.example", cos="gold").account("amy@acme.example")
    got = account_limits(d, "amy@acme.example")
    assert got["services"] == ["mail", "imap"] and got["quota_bytes"] == 100 and got["max_message_bytes"] == 10
    assert account_limits(d, "nobody@acme.example") is None


def test_a_domain_without_a_class_gets_the_default_class(d):
    """Domains from before every domain got a class carry cos=None: they get the cluster's
    default class (Limits.default_cos, from Settings.default_cos), never "unlimited"."""
    assert account_limits(d, "amy@acme.example")["quota_bytes"] is None   # no default class exists yet
    d.put("cos", "default", kind="cos", name="default", limits={"quota_bytes": 1000, "max_message_bytes": 50})
    got = account_limits(d, "amy@acme.example")
    assert got["quota_bytes"] == 1000 and got["max_message_bytes"] == 50
    d.put("cos", "house", kind="cos", name="house", limits={"quota_bytes": 7, "services": ["imap"]})
    assert account_limits(d, "amy@acme.example", default_cos="house")["quota_bytes"] == 7   # the setting's name
    assert resolve(d, "amy@acme.example", Limits(default_cos="house")).reason is Refusal.MAIL_NOT_ENABLED
    assert mailboxes(resolve(d, "amy@acme.example")) == ["amy@acme.example"]   # "default" grants mail
    d.put("cos", "gold", kind="cos", name="gold", limits={"quota_bytes": 5000})
    d.domain_("acme.example", cos="gold")           # a domain's own class wins over the default
    assert account_limits(d, "amy@acme.example")["quota_bytes"] == 5000


def test_normalise_address():
    assert normalise_address(" <Kim@ACME.Example.> ") == "kim@acme.example"
    assert normalise_address("kim@bücher.example") == "kim@xn--bcher-kva.example"
    assert normalise_address("plain@acme.example") == "plain@acme.example"


_names = st.sampled_from([f"n{i}@acme.example" for i in range(8)] + ["x@remote.example", "bad address"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f"n{i}@acme.example" for i in range(8)]),
                       st.tuples(st.booleans(), st.lists(_names, max_size=4), st.booleans()), max_size=8),
       _names)
def test_any_directory_gives_one_answer_and_never_raises(entries, recipient):
    d = Dir().domain_("acme.example")
    for address, (is_alias, targets, keep) in entries.items():
        if is_alias:
            d.alias(address, *(targets or ["x@remote.example"]))
        else:
            d.account(address, forwarding=targets, keep_copy=keep)
    r = resolve(d, recipient, Limits(max_depth=6, max_results=20, max_steps=200))
    assert isinstance(r, (Accepted, Refused))
    if isinstance(r, Accepted):
        assert r.mailboxes or r.remote
        assert len({m.address for m in r.mailboxes}) == len(r.mailboxes)
