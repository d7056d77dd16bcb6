"""The regional stream layout of colony.regions, without a server."""

from __future__ import annotations

import pytest

from colony.bus import names
from colony.bus.schema import stream_configs
from colony.regions import RegionLayoutError, sources_differ
from colony.settings import Settings


def _by_name(settings):
    return {c.name: c for c in stream_configs(settings)}


def test_one_region_is_unchanged():
    plain = _by_name(Settings())
    assert all(not c.sources and c.mirror is None for c in plain.values())
    assert plain[names.STREAM_PROVISIONING].subjects == [names.SUBJECTS_PROVISIONING]


def test_home_region_sources_its_mail_from_every_other_region():
    eu = _by_name(Settings(region="eu", regions="eu,us,ap"))
    sources = eu[names.STREAM_MAIL].sources
    assert {(s.name, s.filter_subject, s.external.api) for s in sources} == {
        (names.STREAM_MAIL, names.mail_region_filter("eu"), names.js_api_prefix(r)) for r in ("us", "ap")}
    # eu is the primary (first named): it owns PROVISIONING and sums usage and audit.
    assert eu[names.STREAM_PROVISIONING].mirror is None
    assert {s.external.api for s in eu[names.STREAM_USAGE].sources} == {"$JS.us.API", "$JS.ap.API"}
    assert {s.external.api for s in eu[names.STREAM_AUDIT].sources} == {"$JS.us.API", "$JS.ap.API"}


def test_other_regions_mirror_provisioning_and_take_no_writes():
    us = _by_name(Settings(region="us", regions="eu,us"))
    prov = us[names.STREAM_PROVISIONING]
    assert not prov.subjects
    assert (prov.mirror.name, prov.mirror.external.api) == (names.STREAM_PROVISIONING, "$JS.eu.API")
    assert not us[names.STREAM_USAGE].sources


def test_explicit_primary():
    eu = _by_name(Settings(region="eu", regions="eu,us", primary_region="us"))
    assert eu[names.STREAM_PROVISIONING].mirror.external.api == "$JS.us.API"


@pytest.mark.parametrize("kwargs, key", [
    (dict(region="ap", regions="eu,us"), "COLONY_REGIONS"),
    (dict(region="eu", regions="eu,us", primary_region="ap"), "COLONY_PRIMARY_REGION"),
])
def test_bad_layout_names_the_setting(kwargs, key):
    # load_settings refuses such a layout already (tests/unit/test_settings.py); the stream
    # configurations check it again for settings built without validation.
    with pytest.raises(RegionLayoutError, match=key):
        stream_configs(Settings.model_construct(**kwargs))


def test_sources_compared_by_meaning():
    a = _by_name(Settings(region="eu", regions="eu,us"))[names.STREAM_MAIL]
    b = _by_name(Settings(region="eu", regions="eu,us"))[names.STREAM_MAIL]
    c = _by_name(Settings(region="eu", regions="eu,us,ap"))[names.STREAM_MAIL]
    assert not sources_differ(a, b)
    assert sources_differ(a, c)


@pytest.mark.parametrize("region", ["eu", "us"])
def test_production_region_config_denies_the_region_local_subjects(region):
    import re
    from pathlib import Path

    conf = (Path(__file__).resolve().parents[2] / "infra" / "nats" / "regions" / f"{region}.conf").read_text()
    for key in ("deny_imports", "deny_exports"):
        listed = re.search(key + r": \[([^\]]*)\]", conf).group(1)
        assert set(re.findall(r'"([^"]+)"', listed)) == set(names.REGION_LOCAL_SUBJECTS), key


def test_the_home_mail_takes_other_regions_publishes_as_its_own_mail_subjects():
    eu = _by_name(Settings(region="eu", regions="eu,us"))[names.STREAM_MAIL]
    assert eu.subjects == [names.SUBJECTS_MAIL, names.mail_home_filter("eu")]
    assert (eu.subject_transform.src, eu.subject_transform.dest) == (names.mail_home_filter("eu"),
                                                                     names.mail_region_filter("eu"))
    # only eu's MAIL takes eu's: a publish from us is stored once, in eu
    us = _by_name(Settings(region="us", regions="eu,us"))[names.STREAM_MAIL]
    assert names.mail_home_filter("eu") not in us.subjects
    assert _by_name(Settings())[names.STREAM_MAIL].subject_transform is None
    # the links let it through: no region-local subject covers it
    assert not any(names.mail_home_subject("eu", "acme.example", 3).startswith(p.rstrip(">"))
                   for p in names.REGION_LOCAL_SUBJECTS)


def test_only_the_edge_publishes_into_another_regions_mail():
    assert [role for role, grant in names.GRANTS.items() if names.SUBJECTS_MAIL_HOME in grant.append] == ["edge"]


def test_a_failed_home_region_is_skipped_for_a_pause_then_probed_by_one_message():
    from colony.regions import HomeLinks

    links = HomeLinks(pause=10.0)
    assert links.direct("eu", 0.0) and links.direct("eu", 0.0)   # closed: every message crosses
    links.failed("eu", 1.0)
    assert not links.direct("eu", 1.5) and not links.direct("eu", 10.9)  # open: no wait
    assert links.direct("us", 5.0)                                       # per region
    assert links.direct("eu", 11.0)             # the probe
    assert not links.direct("eu", 11.1)         # the others go locally meanwhile
    links.failed("eu", 13.0)                    # the probe timed out too
    assert not links.direct("eu", 22.9)
    assert links.direct("eu", 23.0)
    links.answered("eu", 23.1)
    assert links.direct("eu", 23.1) and links.direct("eu", 23.1) and not links.is_open("eu")


def test_a_cancelled_probe_lets_the_next_message_probe():
    from colony.regions import HomeLinks

    links = HomeLinks(pause=10.0)
    links.failed("eu", 0.0)
    assert links.direct("eu", 10.0)
    assert not links.direct("eu", 10.0)
    links.abandoned("eu")
    assert links.direct("eu", 10.0)


def test_a_probe_that_finds_the_regions_mail_still_waiting_here_looks_again_soon():
    from colony.regions import HOME_BACKLOG_RECHECK, HomeLinks

    links = HomeLinks(pause=10.0)
    links.failed("eu", 0.0)
    assert links.direct("eu", 10.0)              # the probe ...
    links.backlogged("eu", 10.0)                 # ... found local mail for eu: not sent across
    assert links.is_open("eu") and not links.direct("eu", 10.0 + HOME_BACKLOG_RECHECK - 0.01)
    assert links.direct("eu", 10.0 + HOME_BACKLOG_RECHECK)  # looks again after the recheck, not the pause
    links.answered("eu", 23.1)
    assert not links.is_open("eu")


def test_mail_stored_here_while_the_probe_is_out_keeps_the_next_messages_here():
    """An edge's order across a cut: a message stored locally while the probe crosses, or
    still being stored when a probe would go, is not overtaken by the messages after it."""
    from colony.regions import HOME_BACKLOG_RECHECK, HomeLinks

    links = HomeLinks(pause=10.0)
    links.failed("eu", 0.0)
    assert links.direct("eu", 10.0)              # the probe goes out ...
    links.local_started("eu")                    # ... and another message is stored here meanwhile
    links.local_ended("eu")
    links.answered("eu", 10.2)                   # the probe crossed; that message is still here
    assert links.is_open("eu") and not links.direct("eu", 10.2)
    assert links.direct("eu", 10.2 + HOME_BACKLOG_RECHECK)   # a later probe looks at the local MAIL first
    links.answered("eu", 11.3)
    assert not links.is_open("eu")
    links.failed("eu", 20.0)
    links.local_started("eu")                    # a local store still in flight when the pause ends:
    assert not links.direct("eu", 30.0)          # the probe's look would not see it yet
    links.local_ended("eu")
    assert links.direct("eu", 30.0 + HOME_BACKLOG_RECHECK)
