"""Prometheus metrics (prometheus-client) for one Colony instance.

No module-level registry: the node runtime owns one ``CollectorRegistry`` per process
(``runtime.metrics``) and every component registers its metrics on it through a small
class of its own, e.g.::

    class SmtpMetrics:
        def __init__(self, registry: CollectorRegistry) -> None:
            self.accepted = Counter("colony_smtp_accepted_total", "Messages answered 250.",
                                    registry=registry)

The ops listener's ``/metrics`` renders that registry: the runtime's node gauges, process
metrics, and whatever the workload registered.  Metric names start with ``colony_``; label
values never carry a domain or account (cardinality stays bounded per instance).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

T = TypeVar("T")


class _CallbackCollector(Collector):
    """Gauges whose value is read at scrape time (state, active work, epoch)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class Metrics:
    def __init__(self, with_process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared: dict[object, object] = {}
        if with_process:
            ProcessCollector(registry=self.registry)

    def once(self, cls: Callable[[CollectorRegistry], T]) -> T:
        """The one instance of a metrics class on this registry, for components a process may
        run more than once (two queue runners): metric names are unique per registry."""
        if cls not in self._shared:
            self._shared[cls] = cls(self.registry)
        return self._shared[cls]

    def add_callback(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_CallbackCollector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, documentation: str, labels: dict[str, str], value: float,
          extra: list[tuple[dict[str, str], float]] | None = None) -> GaugeMetricFamily:
    """One gauge family with one sample (plus ``extra`` samples with more labels)."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels) + (list(extra[0][0]) if extra else []))
    if extra:
        for more, v in extra:
            family.add_metric([*labels.values(), *more.values()], v)
    else:
        family.add_metric(list(labels.values()), value)
    return family


class _Answer:
    """What a handler inside ``BusRequestMetrics.observe`` may say about its request."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome = "ok"

    def refused(self) -> None:
        self.outcome = "bad_request"


class BusRequestMetrics:
    """RED metrics of the bus requests a service answers (auth, directory, recipients, ...).

    ``subject`` is the served subject name from ``colony.bus.names`` (a fixed set, never a
    per-domain subject); ``outcome`` is ``ok``, ``bad_request`` (refused before the handler),
    ``error`` (the handler raised; the requester got the contract's refusal), ``shed`` (answered
    "temporarily unavailable": too much work queued) or ``expired`` (dropped unanswered: the
    requester had stopped waiting).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("colony_bus_requests", "Bus requests answered, by served subject and outcome.",
                                ["subject", "outcome"], registry=registry)
        self.duration = Histogram("colony_bus_request_duration_seconds", "Time to answer a bus request.",
                                  ["subject"], registry=registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.in_flight = Gauge("colony_bus_requests_in_flight", "Bus requests being answered.", ["subject"],
                               registry=registry)
        # The children per subject (and outcome), found once: labels() takes a lock and builds
        # its key each time, four times per request -- per SIP packet a farm member hands to
        # another.  Bounded: subjects are a fixed set, outcomes five.
        self._per_subject: dict[str, tuple] = {}
        self._per_outcome: dict[tuple[str, str], object] = {}

    @contextmanager
    def observe(self, subject: str):
        """Count one answered request around its handling: ``ok`` unless the block raises or
        calls ``refused()`` on what it is given (the request did not parse or was not admitted)."""
        children = self._per_subject.get(subject)
        if children is None:
            children = self._per_subject[subject] = (self.in_flight.labels(subject), self.duration.labels(subject))
        in_flight, duration = children
        in_flight.inc()
        started = time.perf_counter()
        outcome, answer = "error", _Answer()
        try:
            yield answer
            outcome = answer.outcome
        finally:
            in_flight.dec()
            counter = self._per_outcome.get((subject, outcome))
            if counter is None:
                counter = self._per_outcome[(subject, outcome)] = self.requests.labels(subject, outcome)
            counter.inc()
            duration.observe(time.perf_counter() - started)
