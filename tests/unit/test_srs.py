"""SRS rewriting and reversal (colony.outbound.srs) with an injected clock."""

from __future__ import annotations

import pytest

from colony.outbound.srs import Srs, SrsError, is_srs, srs_key

SECRET = b"a secret of at least sixteen bytes"
DAY = 86_400
NOW = 20_000 * DAY + 3600.0


def test_srs0_round_trip_and_the_wire_format():
    srs = Srs(SECRET)
    rewritten = srs.forward("alice@origin.example", "fwd.example", NOW)
    local, _, domain = rewritten.rpartition("@")
    tag, digest, stamp, host, original = local.split("=")
    assert (tag, domain, host, original) == ("SRS0", "fwd.example", "origin.example", "alice")
    assert len(digest) == 4 and len(stamp) == 2
    assert is_srs(rewritten)
    assert srs.reverse(rewritten, NOW) == "alice@origin.example"
    # Some MTAs lower-case the local part on the way back.
    assert srs.reverse(rewritten.lower(), NOW).lower() == "alice@origin.example"


def test_null_sender_and_our_own_domain_are_not_rewritten():
    srs = Srs(SECRET)
    assert srs.forward("", "fwd.example", NOW) == ""
    assert srs.forward("kim@FWD.example", "fwd.example", NOW) == "kim@FWD.example"


def test_a_second_forwarder_makes_srs1_which_bounces_to_the_first():
    first, second = Srs(b"first forwarder's secret!"), Srs(b"second forwarder's secret")
    srs0 = first.forward("alice@origin.example", "one.example", NOW)
    srs1 = second.forward(srs0, "two.example", NOW)
    assert srs1.startswith("SRS1=") and srs1.endswith("@two.example") and "=one.example==" in srs1
    assert second.reverse(srs1, NOW) == srs0
    assert first.reverse(second.reverse(srs1, NOW), NOW) == "alice@origin.example"
    # A third forwarder keeps pointing at the first one.
    srs1_again = Srs(b"third forwarder's secret!").forward(srs1, "three.example", NOW)
    assert "=one.example==" in srs1_again and srs1_again.endswith("@three.example")


@pytest.mark.parametrize("tamper", [
    lambda a: a.replace("origin.example", "evil.example"),               # another original sender
    lambda a: a.replace("=alice@", "=mallory@"),
    lambda a: "SRS0=" + "x" + a[9:],                                       # another hash
    lambda a: "SRS0=" + a.split("=")[1][:1] + "=" + "=".join(a.split("=")[2:]),   # a one-character hash
])
def test_forged_addresses_are_refused(tamper):
    srs = Srs(SECRET)
    forged = tamper(srs.forward("alice@origin.example", "fwd.example", NOW))
    with pytest.raises(SrsError) as caught:
        srs.reverse(forged, NOW)
    assert caught.value.reason == "forged"


def test_another_secret_is_forged_but_a_previous_secret_still_reverses():
    old = Srs(b"last year's secret, retired")
    address = old.forward("alice@origin.example", "fwd.example", NOW)
    with pytest.raises(SrsError, match="hash"):
        Srs(SECRET).reverse(address, NOW)
    assert Srs(SECRET, previous=(b"last year's secret, retired",)).reverse(address, NOW) == "alice@origin.example"


def test_expiry_after_max_age_days_and_across_the_1024_day_wrap():
    srs = Srs(SECRET, max_age_days=21)
    address = srs.forward("alice@origin.example", "fwd.example", NOW)
    assert srs.reverse(address, NOW + 21 * DAY) == "alice@origin.example"
    with pytest.raises(SrsError) as caught:
        srs.reverse(address, NOW + 22 * DAY)
    assert caught.value.reason == "expired"
    near_wrap = 1023 * DAY + 10.0   # day 1023; five days later the day number wraps to 4
    wrapped = srs.forward("alice@origin.example", "fwd.example", near_wrap)
    assert srs.reverse(wrapped, near_wrap + 5 * DAY) == "alice@origin.example"
    with pytest.raises(SrsError):
        srs.reverse(address, NOW - 2 * DAY)   # stamped in the future: as old as 1022 days


@pytest.mark.parametrize("address", ["bob@fwd.example", "SRS0=abcd@fwd.example", "SRS0=abcd=JO=host@fwd.example",
                                     "SRS1=abcd=host@fwd.example", "SRS0=abcd=J!=h=l@fwd.example"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(SrsError):
        Srs(SECRET).reverse(address, NOW)


def test_secrets_are_long_enough_and_the_derived_key_is_not_the_cluster_secret():
    with pytest.raises(ValueError):
        Srs(b"short")
    cluster = b"c" * 32
    assert srs_key(cluster) != cluster and len(srs_key(cluster)) == 32
