"""The MX's recipient policy with SRS: forwarding targets outside the cluster are accepted
as remote, bounces to SRS addresses of hosted domains are reversed to the original sender,
forged, malformed and expired ones refused 550; without an SRS key nothing changes."""

from __future__ import annotations

from colony.outbound.srs import Srs
from colony.protocols.smtp import events as E
from colony_edge.recipients import REMOTE_ONLY, RecipientPolicy
from test_edge_recipients import directory, session

SECRET = b"sixteen bytes or more of secret"
DAY = 86_400.0
NOW = 20_000 * DAY


def forwarding_directory():
    d = directory()
    d.put("address", "fwd@b.test", {"kind": "account", "address": "fwd@b.test", "domain": "b.test", "name": "fwd",
                                    "forwarding": ["out@remote.test"]})
    d.put("address", "copy@b.test", {"kind": "account", "address": "copy@b.test", "domain": "b.test",
                                     "name": "copy", "forwarding": ["out@remote.test"], "forward_keep_copy": True})
    return d


def policy(srs: Srs | None, now: float = NOW) -> RecipientPolicy:
    return RecipientPolicy(forwarding_directory(), srs=srs, clock=lambda: now)


async def test_forwarding_outside_is_accepted_as_remote_with_srs():
    s = session()
    assert (await policy(Srs(SECRET)).rcpt_to(s, E.RcptTo("fwd@b.test"))).accept
    assert (await policy(Srs(SECRET)).rcpt_to(s, E.RcptTo("copy@b.test"))).accept
    only_remote, with_copy = s.recipients
    assert only_remote.mailboxes == () and only_remote.remote == ("out@remote.test",)
    assert [m.address for m in with_copy.mailboxes] == ["copy@b.test"] and with_copy.remote == ("out@remote.test",)


async def test_without_an_srs_key_remote_only_forwarding_is_still_refused():
    s = session()
    assert (await policy(None).rcpt_to(s, E.RcptTo("fwd@b.test"))).reply == REMOTE_ONLY
    assert (await policy(None).rcpt_to(s, E.RcptTo("copy@b.test"))).accept
    assert s.recipients[0].remote == ()


async def test_a_bounce_to_our_srs_address_goes_to_the_original_sender():
    srs = Srs(SECRET)
    address = srs.forward("alice@origin.test", "b.test", NOW)
    s = session()
    s.mail_from = E.MailFrom("")
    assert (await policy(srs, NOW + DAY).rcpt_to(s, E.RcptTo(address))).accept
    assert s.recipients[0].mailboxes == () and s.recipients[0].remote == ("alice@origin.test",)


async def test_a_bounce_for_a_hosted_original_sender_lands_in_its_mailbox():
    srs = Srs(SECRET)
    address = srs.forward("x@a.test", "b.test", NOW)
    s = session()
    assert (await policy(srs).rcpt_to(s, E.RcptTo(address))).accept
    assert [m.address for m in s.recipients[0].mailboxes] == ["x@a.test"]


async def test_forged_malformed_and_expired_srs_addresses_get_550():
    srs = Srs(SECRET)
    good = srs.forward("alice@origin.test", "b.test", NOW)
    forged = good.replace("origin.test", "victim.test")
    for address, now, reason in ((forged, NOW, "srs_forged"), ("SRS0=abcd@b.test", NOW, "srs_malformed"),
                                 (good, NOW + 22 * DAY, "srs_expired"),
                                 (Srs(b"somebody else's secret!").forward("a@o.test", "b.test", NOW), NOW,
                                  "srs_forged")):
        verdict = await policy(srs, now).rcpt_to(session(), E.RcptTo(address))
        assert not verdict.accept and verdict.reply.code == 550 and verdict.reason == reason, address


async def test_srs_addresses_of_domains_we_do_not_host_are_not_ours_to_reverse():
    srs = Srs(SECRET)
    address = srs.forward("alice@origin.test", "elsewhere.test", NOW)
    verdict = await policy(srs).rcpt_to(session(), E.RcptTo(address))
    assert not verdict.accept and verdict.reply.code == 550 and verdict.reason != "srs_forged"


def test_a_bad_srs_secret_file_is_named_as_itself(tmp_path):
    """load_srs read COLONY_SRS_SECRET_FILE through the cluster secret's loader, whose error
    named COLONY_CLUSTER_SECRET_FILE: an operator was sent to fix the wrong file."""
    import pytest

    from colony.settings import ConfigError, Settings
    from colony_edge.forwarding import load_srs

    short = tmp_path / "srs.secret"
    short.write_bytes(b"too short")
    for path in (tmp_path / "missing.secret", short):
        with pytest.raises(ConfigError) as info:
            load_srs(Settings(srs_secret_file=path))
        assert str(info.value).startswith("COLONY_SRS_SECRET_FILE") and "CLUSTER" not in str(info.value)
