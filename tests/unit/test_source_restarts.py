"""The rules of colony.regions.SourceRestarts: which cross-region sources the controller has
the server set up afresh (time an argument, no server)."""

from __future__ import annotations

from colony.bus import names
from colony.bus.schema import sourcing_stream_configs
from colony.regions import SourceRestarts, SourceSeen
from colony.settings import Settings

REGIONS = ["eu", "us", "ap"]


def _seen(active_ns, api="$JS.us.API", stream=names.STREAM_MAIL, error=None) -> SourceSeen:
    raw = {"name": stream, "active": active_ns, "lag": 0, "external": {"api": api, "deliver": ""}}
    if error:
        raw["error"] = {"code": 404, "err_code": 10059, "description": error}
    return SourceSeen.from_info(stream, raw, REGIONS)


def test_the_servers_report_is_read_with_its_region():
    assert _seen(-1) == SourceSeen(names.STREAM_MAIL, "us", None)          # never heard from
    assert _seen(2_500_000_000, api="$JS.ap.API").region == "ap"
    assert _seen(2_500_000_000).active == 2.5
    assert _seen(-1, error="stream not found").error == "stream not found"
    assert SourceSeen.from_info(names.STREAM_MAIL, {"name": "MAIL", "active": 5}, REGIONS).region is None
    assert _seen(-1, api="$JS.elsewhere.API").region is None               # not one of ours


def test_a_source_that_hears_its_heartbeats_is_left_alone():
    rules = SourceRestarts(stale_after=3.0, pause=5.0)
    assert rules.stale([_seen(900_000_000), _seen(2_900_000_000)], now=100.0) == []


def test_a_stale_source_is_restarted_only_while_its_region_answers():
    rules = SourceRestarts(stale_after=3.0, pause=5.0)
    never, quiet = _seen(-1), _seen(12_000_000_000, api="$JS.ap.API")
    stale = rules.stale([never, quiet], now=100.0)
    assert stale == [never, quiet]
    assert rules.due(stale, answering=set(), now=100.0) == []                  # a cut: nothing to read
    assert rules.stale([never, quiet], now=101.0) == [never, quiet]            # asked again next time
    assert rules.due(stale, answering={"us"}, now=101.0) == [never]


def test_a_restarted_source_gets_time_to_come_up_then_is_judged_again():
    rules = SourceRestarts(stale_after=3.0, pause=5.0)
    never = _seen(-1)
    assert rules.due(rules.stale([never], now=10.0), {"us"}, now=10.0) == [never]
    assert rules.stale([never], now=14.9) == []
    assert rules.stale([never], now=15.0) == [never]
    # the pause is per stream and region
    usage = _seen(-1, stream=names.STREAM_USAGE)
    assert rules.stale([usage], now=11.0) == [usage]


def test_the_sourcing_streams_of_each_region():
    eu = {c.name for c in sourcing_stream_configs(Settings(region="eu", regions=",".join(REGIONS)))}
    us = {c.name for c in sourcing_stream_configs(Settings(region="us", regions=",".join(REGIONS)))}
    assert eu == {names.STREAM_MAIL, names.STREAM_USAGE, names.STREAM_AUDIT}   # the primary sums
    assert us == {names.STREAM_MAIL}
    assert sourcing_stream_configs(Settings()) == []
