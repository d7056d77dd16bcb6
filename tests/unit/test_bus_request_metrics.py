"""Bus request RED metrics: counted by served subject and outcome, timed, in flight."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from colony.metrics import BusRequestMetrics


def value(registry: CollectorRegistry, name: str, labels: dict) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_observe_counts_ok_and_error_and_clears_in_flight():
    registry = CollectorRegistry()
    m = BusRequestMetrics(registry)
    with m.observe("colony.ctl.api"):
        assert value(registry, "colony_bus_requests_in_flight", {"subject": "colony.ctl.api"}) == 1
    with pytest.raises(RuntimeError), m.observe("colony.ctl.api"):
        raise RuntimeError("handler failed")
    assert value(registry, "colony_bus_requests_total", {"subject": "colony.ctl.api", "outcome": "ok"}) == 1
    assert value(registry, "colony_bus_requests_total", {"subject": "colony.ctl.api", "outcome": "error"}) == 1
    assert value(registry, "colony_bus_requests_in_flight", {"subject": "colony.ctl.api"}) == 0
    assert value(registry, "colony_bus_request_duration_seconds_count", {"subject": "colony.ctl.api"}) == 2


def test_a_refused_request_is_counted_as_bad_request():
    registry = CollectorRegistry()
    m = BusRequestMetrics(registry)
    with m.observe("colony.node.cmd.*") as request:
        request.refused()
    assert value(registry, "colony_bus_requests_total", {"subject": "colony.node.cmd.*", "outcome": "bad_request"}) == 1
    assert value(registry, "colony_bus_requests_in_flight", {"subject": "colony.node.cmd.*"}) == 0
