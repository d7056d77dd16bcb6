"""MTA-STS rules (RFC 8461) without I/O: the TXT record, the policy file, MX patterns and
the cache's fetch/expiry decisions."""

from __future__ import annotations

import pytest

from colony.outbound.mta_sts import MAX_AGE_LIMIT, Policy, PolicyCache, PolicyError, parse_policy, parse_record

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


def test_record_id_and_the_cases_that_mean_no_record():
    assert parse_record(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_record(["v=STSv1;id=abc123", "some other txt"]) == "abc123"
    assert parse_record(["v=STSv1; id=abc; ext=1"]) == "abc"          # unknown fields ignored
    assert parse_record([]) is None
    assert parse_record(["v=STSv1; id=a", "v=STSv1; id=b"]) is None   # §3.1: more than one -> none
    assert parse_record(["v=STSv1; id=not-alnum"]) is None
    assert parse_record(["v=STSv1; id=" + "a" * 33]) is None           # 1-32 characters
    assert parse_record(["v=STSv1"]) is None                            # id is required
    assert parse_record(["id=abc; v=STSv1"]) is None                    # v= must come first
    assert parse_record(["v=STSv1; garbage"]) is None


def test_policy_fields_crlf_or_lf_and_repeated_mx():
    policy = parse_policy(POLICY, "id1")
    assert policy == Policy(id="id1", mode="enforce", mx=("mail.example.com", "*.example.net"), max_age=86400)
    assert parse_policy(POLICY.replace("\r\n", "\n"), "id1") == policy
    assert parse_policy(POLICY + "unknown_key: whatever\n", "id1") == policy
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n", "x").mode == "none"   # no mx needed


@pytest.mark.parametrize("text, reason", [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "without mx"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n", "max_age"),
    (f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_LIMIT + 1}\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n<html>\n", "key: value"),
])
def test_bad_policies_are_refused_with_the_reason(text, reason):
    with pytest.raises(PolicyError, match=reason):
        parse_policy(text, "id")


def test_mx_patterns_wildcard_is_one_label_and_case_does_not_matter():
    policy = parse_policy(POLICY, "id1")
    assert policy.allows("mail.example.com") and policy.allows("MAIL.Example.COM.")
    assert policy.allows("mx1.example.net")
    assert not policy.allows("example.net")                 # the wildcard needs a label
    assert not policy.allows("a.b.example.net")             # ... exactly one
    assert not policy.allows("mail.example.com.evil.test")
    assert not policy.allows("evilexample.net")


def test_cache_fetches_on_a_new_id_keeps_a_policy_without_its_record_and_expires_it():
    cache = PolicyCache()
    policy = parse_policy(POLICY, "id1")
    assert cache.needs_fetch("example.com", "id1", now=0.0)
    assert not cache.needs_fetch("example.com", None, now=0.0)   # no record, nothing cached: no MTA-STS
    cache.store("example.com", policy, now=0.0)
    assert not cache.needs_fetch("example.com", "id1", now=100.0)
    assert cache.needs_fetch("example.com", "id2", now=100.0)   # the domain changed its policy
    # The record vanished (or an attacker stripped it): the cached policy still holds.
    assert not cache.needs_fetch("example.com", None, now=100.0)
    assert cache.current("example.com", now=86399.0) is policy
    assert cache.current("example.com", now=86400.0) is None    # max_age is over
    assert cache.needs_fetch("example.com", "id1", now=86400.0)


def test_cache_is_bounded_least_recently_used_first():
    cache = PolicyCache(limit=2)
    for name in ("a.test", "b.test"):
        cache.store(name, parse_policy(POLICY, name[0]), now=0.0)
    cache.current("a.test", now=1.0)                              # a is used again
    cache.store("c.test", parse_policy(POLICY, "c"), now=1.0)
    assert cache.current("b.test", now=2.0) is None
    assert cache.current("a.test", now=2.0) is not None and cache.current("c.test", now=2.0) is not None


def test_tlsrpt_record_report_addresses():
    from colony.outbound.mta_sts import parse_tlsrpt

    assert parse_tlsrpt(["v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/v1"]) == (
        "mailto:tls@example.com", "https://r.example.com/v1")
    assert parse_tlsrpt(["v=TLSRPTv1;rua=mailto:a@x.test", "unrelated"]) == ("mailto:a@x.test",)
    assert parse_tlsrpt(["v=TLSRPTv1; rua=ftp://x.test"]) == ()                    # only mailto: and https:
    assert parse_tlsrpt(["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"]) == ()  # two: none
    assert parse_tlsrpt([]) == () and parse_tlsrpt(["v=TLSRPTv1"]) == ()


def test_a_failed_fetch_is_not_retried_for_the_same_id_until_retry_after():
    cache = PolicyCache(retry_after=300.0)
    cache.fetch_failed("example.com", "id1", now=0.0)
    assert not cache.needs_fetch("example.com", "id1", now=299.0)
    assert cache.needs_fetch("example.com", "id2", now=10.0)        # a new id is worth a try at once
    assert cache.needs_fetch("example.com", "id1", now=300.0)
    cache.store("example.com", parse_policy(POLICY, "id1"), now=300.0)
    assert not cache.needs_fetch("example.com", "id1", now=301.0)   # stored: the failure is forgotten
