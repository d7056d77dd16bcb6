"""Regions: several Colony clusters federated through NATS leafnodes (the seed's super cluster).

Theory of operation
-------------------
Each region is its own NATS server or cluster and its own JetStream *domain*
(``names.js_domain(region)``); the regions' servers are leafnodes of a small hub server
(JetStream domain ``names.HUB_JS_DOMAIN``).  Nothing is forwarded by hand: every copy between
regions is a JetStream stream source or mirror reading the other domain's API
(``names.js_api_prefix``), so the server keeps the position, retries after a cut and never
copies a message twice.

* Subjects that a region's streams capture (``names.REGION_LOCAL_SUBJECTS``) are denied on the
  leafnode links both ways.  Without that, a publish in ``us`` to a subject ``eu``'s stream also
  listens on would be stored in both regions and then sourced again: a duplicate.
* Mail: an edge publishes mail for a domain homed in another region straight into the home
  region's MAIL across the link (``names.mail_home_subject``, which only the home MAIL takes and
  stores as its ``names.mail_subject`` by a subject transform), so ``250`` means stored in the
  home region, one synced write in all.  When the home region does not answer within
  ``mail_home_ack_timeout`` the edge stores the mail in *its own* region's MAIL under
  ``names.mail_subject(home, domain, partition)`` with the same ``Nats-Msg-Id``, and for a while
  (``HomeLinks``) sends that region's mail there without trying: ``250`` then means stored
  in the receiving region.  The home region's MAIL sources every other region's MAIL filtered to
  ``names.mail_region_filter(home)``; a copy whose direct publish was stored after all is the
  same message id, dropped by the home MAIL's duplicate window or, later than that, by the
  stores' delivery key.  Its mailstores consume its partitions as they always do.  MAIL is a
  work queue: the copy leaves the foreign region as the source reads it, and its order within
  one source is kept.
* Provisioning: one region is the primary and owns the PROVISIONING stream; every other region
  keeps a mirror of it under the same name, which its directory cache and auth read, so a cut
  region keeps serving logins and mail with what it last saw.  A mirror takes no publishes, so
  a change attempted in a cut region is refused (the write has nowhere to go), never kept
  locally and lost in a later conflict.
* Usage and audit: the primary region's USAGE and AUDIT streams also source the other regions'
  ones, so billing and the audit log sum every region.
* Keys the admin API writes beside its events (``MIRRORED_BUCKETS``: the data keys that open
  the sealed secrets in PROVISIONING, the DKIM signing keys) are owned by the primary like
  PROVISIONING itself; every other region keeps a mirror of each bucket under the same name
  (history 1, so a key purged in the primary -- crypto-shredding -- is gone from the mirror
  too).  Without them a region's auth could not open a password hash, nor its edges sign.

This module is pure: it turns the region layout and the single-region stream configurations
into the regional ones; ``colony.bus.schema`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource, SubjectTransform

from colony.bus import names


class RegionLayoutError(ValueError):
    pass


def check_layout(region: str, regions: list[str], primary: str) -> None:
    """Errors name the setting and the fix."""
    if not regions:
        return
    if region not in regions:
        raise RegionLayoutError(f"COLONY_REGION={region!r} is not one of COLONY_REGIONS={','.join(regions)}; "
                                f"add it to regions or correct region")
    if primary not in regions:
        raise RegionLayoutError(f"COLONY_PRIMARY_REGION={primary!r} is not one of COLONY_REGIONS={','.join(regions)}; "
                                f"name one of the regions as primary_region")


def _external(region: str) -> ExternalStream:
    return ExternalStream(api=names.js_api_prefix(region))


def mail_sources(home: str, regions: list[str]) -> list[StreamSource]:
    """The home region's MAIL reads mail for it that other regions' edges accepted.

    ``opt_start_seq=1``: when the server sets a source up afresh (the stream starts, is
    updated or its leader changes, or the first consumer across a new leafnode link is
    replaced) it looks for its position in the messages it holds; MAIL is a work queue, so
    the sourced ones are gone once stored, and without a configured start it falls back to
    the time of its *last message* -- any local mail -- and skips every message the other
    region accepted before that and had not handed over yet (they stayed in that region's
    MAIL for ever: mail answered ``250`` and lost).  From sequence 1 it reads what the other
    region's MAIL still holds, which, that being a work queue too, is exactly what this
    region has not confirmed; a message handed over twice is stored once by the stores'
    delivery key."""
    return [StreamSource(name=names.STREAM_MAIL, filter_subject=names.mail_region_filter(home), external=_external(other),
                         opt_start_seq=1)
            for other in regions if other != home]


def mail_home_transform(region: str) -> SubjectTransform:
    """The home MAIL stores what other regions' edges publish into it as its own mail subjects
    (a subject the transform's source does not match -- local and sourced mail -- is stored
    unchanged)."""
    return SubjectTransform(src=names.mail_home_filter(region), dest=names.mail_region_filter(region))


def summed_sources(stream: str, home: str, regions: list[str]) -> list[StreamSource]:
    """The primary's USAGE or AUDIT reads every other region's, whole."""
    return [StreamSource(name=stream, external=_external(other)) for other in regions if other != home]


def provisioning_mirror(config: StreamConfig, primary: str) -> StreamConfig:
    """A non-primary region's PROVISIONING: same name, a mirror of the primary's (no subjects:
    nothing may be published into it)."""
    return replace(config, subjects=None, mirror=StreamSource(name=names.STREAM_PROVISIONING, external=_external(primary)))


# Buckets the primary owns and the other regions mirror (see the theory of operation).
MIRRORED_BUCKETS = (names.BUCKET_SECRET_KEYS, names.BUCKET_DKIM_KEYS)


def mirrored_buckets(settings) -> tuple[str, ...]:
    """The buckets this instance's region mirrors from the primary (none in the primary or
    outside a super cluster)."""
    if len(settings.region_list) < 2 or settings.region == settings.primary:
        return ()
    return MIRRORED_BUCKETS


def bucket_mirror(bucket: str, primary: str, replicas: int) -> StreamConfig:
    """A non-primary region's copy of one of the primary's KV buckets: the bucket's own stream
    name (``KV_<bucket>``, so ``js.key_value(bucket)`` reads it as usual), no subjects (a write
    in this region has nowhere to go and fails, as a provisioning write does), one value per key."""
    stream = f"KV_{bucket}"
    return StreamConfig(name=stream, mirror=StreamSource(name=stream, external=_external(primary)),
                        max_msgs_per_subject=1, allow_direct=True, allow_rollup_hdrs=True, deny_delete=True,
                        storage=StorageType.FILE, num_replicas=replicas,
                        description=f"mirror of the primary region's {bucket} bucket")


def regional_stream_configs(configs: list[StreamConfig], region: str, regions: list[str], primary: str) -> list[StreamConfig]:
    """The stream configurations of one region of a super cluster (unchanged with no regions)."""
    check_layout(region, regions, primary)
    if len(regions) < 2:
        return configs
    out = []
    for config in configs:
        if config.name == names.STREAM_MAIL:
            config = replace(config, subjects=[*config.subjects, names.mail_home_filter(region)],
                             subject_transform=mail_home_transform(region), sources=mail_sources(region, regions))
        elif config.name == names.STREAM_PROVISIONING and region != primary:
            config = provisioning_mirror(config, primary)
        elif config.name in (names.STREAM_USAGE, names.STREAM_AUDIT) and region == primary:
            config = replace(config, sources=summed_sources(config.name, region, regions))
        out.append(config)
    return out


def sources_differ(have: StreamConfig, want: StreamConfig) -> bool:
    """Whether the sources or mirror of an existing stream are not the ones wanted (compared by
    stream, filter, API and start sequence, the server adds fields of its own)."""

    def key(s: StreamSource | None):
        if s is None:
            return None
        return (s.name, s.filter_subject or None, s.external.api if s.external else None, s.opt_start_seq or None)

    return (sorted(map(key, have.sources or [])) != sorted(map(key, want.sources or []))
            or key(have.mirror) != key(want.mirror))


# --- sources that stopped reading --------------------------------------------------------
#
# The server sets a source up by asking the other domain's API for a consumer.  If that
# request goes unanswered (the link is not up yet) it waits 30 s for the answer; if it is
# refused (the other region's stream does not exist yet) it tries again after 10 s, 20 s,
# ... up to two minutes (nats-server 2.15 ``stream.go``: ``srcConsumerWaitTime``,
# ``calculateRetryBackoff``).  Nothing on the server shortens that wait when the other region
# turns up, so the first cross-region mail after a start waited up to 40 s.  The region's
# controller watches its sourcing streams and, when a source has not heard from its region
# for a while although that region's JetStream answers now, has the server set it up afresh.

# The server's source consumers send an idle heartbeat every second (``sourceHealthHB``): a
# source that has heard nothing for three is not reading, whatever the machine's load.
SOURCE_STALE_AFTER = 3.0
# A source set up afresh needs a round trip to the other region and the server's 0.1-0.2 s
# jitter before its first heartbeat; it is not judged again before this has passed.
SOURCE_RESTART_PAUSE = 5.0
# How often the controller looks (a stream info per sourcing stream).
SOURCE_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class SourceSeen:
    """One source of a stream as the server reports it (``STREAM.INFO``'s ``sources[]``).

    ``region`` is the region it reads, from its external API (``None`` for a source within
    the region); ``active`` is seconds since the server last heard from it, ``None`` when it
    never has (the server reports -1)."""
    stream: str
    region: str | None
    active: float | None
    error: str | None = None

    @classmethod
    def from_info(cls, stream: str, source: dict, regions: list[str]) -> SourceSeen:
        """From the JSON of one ``sources[]`` entry; the region is the one of ``regions`` whose
        API the source's ``external.api`` names."""
        api = (source.get("external") or {}).get("api")
        region = next((r for r in regions if names.js_api_prefix(r) == api), None) if api else None
        active = source.get("active")
        error = source.get("error")
        return cls(stream=stream, region=region,
                   active=None if not isinstance(active, (int, float)) or active < 0 else active / 1e9,
                   error=(error.get("description") if isinstance(error, dict) else error) or None)


class SourceRestarts:
    """Which sources to set up afresh: the rules, with time an argument.

    A source is *stale* when the server has not heard from it for ``stale_after`` seconds
    (or never has); the shell then asks whether the source's region answers, and only a
    stale source whose region answers is restarted -- during a cut nothing is done, as
    nothing could be read.  After a restart the source is left alone for ``pause`` seconds
    so that the server's own set-up can finish."""

    def __init__(self, stale_after: float = SOURCE_STALE_AFTER, pause: float = SOURCE_RESTART_PAUSE) -> None:
        self.stale_after = stale_after
        self.pause = pause
        self._restarted: dict[tuple[str, str], float] = {}  # (stream, region) -> when

    def stale(self, seen: list[SourceSeen], now: float) -> list[SourceSeen]:
        out = []
        for source in seen:
            if source.region is None:
                continue
            if source.active is not None and source.active < self.stale_after:
                continue
            at = self._restarted.get((source.stream, source.region))
            if at is not None and now - at < self.pause:
                continue
            out.append(source)
        return out

    def due(self, stale: list[SourceSeen], answering: set[str], now: float) -> list[SourceSeen]:
        """The stale sources to restart now, given the regions whose JetStream answered."""
        due = [s for s in stale if s.region in answering]
        for source in due:
            self._restarted[(source.stream, source.region)] = now
        return due


# --- publishing into the home region ------------------------------------------------------
#
# An edge publishes mail for another region's domain straight into that region's MAIL and
# waits up to ``mail_home_ack_timeout`` for its ack; without one it stores the mail in its own
# region's MAIL, which the home region sources.  A cut link (or a stopped hub, which drops
# nothing and answers nothing) would add that wait to every such SMTP transaction, so after a
# failure the region's mail goes to the local MAIL at once for ``HOME_LINK_PAUSE`` seconds;
# then one message tries the link again while the others keep going locally.  Mail the local
# MAIL still holds for the region (not yet taken by its source) would be overtaken by a message
# sent across, so the probe waits until the local MAIL has none left, asking again every
# ``HOME_BACKLOG_RECHECK`` seconds: an edge's mail reaches the home region in the order it took it.
HOME_LINK_PAUSE = 10.0
HOME_BACKLOG_RECHECK = 1.0


class HomeLinks:
    """Whether to publish a region's mail into its MAIL across the link now: the rules, with
    time an argument.

    A region is *closed* (publish across) until a publish into it fails or goes unanswered;
    it is then *open* (store locally, no wait) for ``pause`` seconds, after which the next
    message is the *probe*: the one publish across while every other goes locally, until its
    outcome closes the region again or opens it for another pause.  A probe that finds the
    region's mail still waiting in the local MAIL is not sent across (``backlogged``).  Every
    ``direct()`` that answers ``True`` must be followed by ``answered()``, ``failed()``,
    ``backlogged()`` or ``abandoned()`` for that region.

    A store of the region's mail in the local MAIL is bracketed by ``local_started()`` and
    ``local_ended()``: no probe goes while one is in flight (the probe's look at the local
    MAIL would not see it yet), and one that starts while the probe is out keeps the region
    open after the probe's answer, until a later probe finds the local MAIL empty -- else the
    messages after the answer would cross ahead of it."""

    def __init__(self, pause: float = HOME_LINK_PAUSE) -> None:
        self.pause = pause
        self._open_until: dict[str, float] = {}  # region -> when a probe may go; absent: closed
        self._probing: set[str] = set()
        self._local: dict[str, int] = {}          # region -> its stores in the local MAIL in flight
        self._stored_during_probe: set[str] = set()

    def direct(self, region: str, now: float) -> bool:
        until = self._open_until.get(region)
        if until is None:
            return True
        if now < until or region in self._probing:
            return False
        if self._local.get(region):
            self.backlogged(region, now)
            return False
        self._probing.add(region)
        return True

    def local_started(self, region: str) -> None:
        self._local[region] = self._local.get(region, 0) + 1
        if region in self._probing:
            self._stored_during_probe.add(region)

    def local_ended(self, region: str) -> None:
        left = self._local.get(region, 0) - 1
        if left > 0:
            self._local[region] = left
        else:
            self._local.pop(region, None)

    def answered(self, region: str, now: float) -> None:
        """A publish into ``region`` was acknowledged: its mail goes across again (unless some
        was stored here while it was out: then once a later probe finds none left here)."""
        self._probing.discard(region)
        if region in self._stored_during_probe:
            self.backlogged(region, now)
            return
        self._open_until.pop(region, None)

    def failed(self, region: str, now: float) -> None:
        """A publish into ``region`` failed or was not answered in time."""
        self._probing.discard(region)
        self._stored_during_probe.discard(region)
        self._open_until[region] = now + self.pause

    def backlogged(self, region: str, now: float) -> None:
        """The probe found mail for ``region`` still in the local MAIL: it stays there, and so
        does the region's mail, until the next look (sooner than a failure's pause)."""
        self._probing.discard(region)
        self._stored_during_probe.discard(region)
        self._open_until[region] = now + min(self.pause, HOME_BACKLOG_RECHECK)

    def abandoned(self, region: str) -> None:
        """A publish into ``region`` ended without an outcome (cancelled): a probe may go again."""
        self._probing.discard(region)
        self._stored_during_probe.discard(region)

    def is_open(self, region: str) -> bool:
        return region in self._open_until
