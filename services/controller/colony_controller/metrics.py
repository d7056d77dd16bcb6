"""The cluster gauges, exported by the active controller only (a standby exports none of
them, so ``sum()`` over every instance counts each node once).

- ``colony_cluster_nodes{role, state}``: instances by role and state, as the controller sees
  the ``NODES`` bucket;
- ``colony_cluster_controller_active``: 1 on the instance holding the lease;
- ``colony_cluster_elections_total{how}``: leases this instance took (vacant, expired, ...);
- ``colony_cluster_commands_total{command, status}``: drain/ready/whoami answered, by status;
- ``colony_cluster_nodes_failed_total``: instances this controller declared FAILED.

The epoch is ``colony_node_controller_epoch``, which every instance exports.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from colony.cluster.membership import NodeRecord, NodeState


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.elections = Counter("colony_cluster_elections", "Controller leases this instance took.",
                                 ["how"], registry=registry)
        self.commands = Counter("colony_cluster_commands", "Controller API commands answered (drain, ready, whoami).",
                                ["command", "status"], registry=registry)
        self.declared_failed = Counter("colony_cluster_nodes_failed", "Instances this controller declared FAILED.",
                                       registry=registry)

    @staticmethod
    def node_gauges(active: Callable[[], bool], records: Callable[[], Iterable[NodeRecord]]):
        """The collect function of the by-role-and-state gauges (``Metrics.add_callback``)."""

        def collect():
            is_active = active()
            flag = GaugeMetricFamily("colony_cluster_controller_active", "1 on the active controller.")
            flag.add_metric([], 1.0 if is_active else 0.0)
            yield flag
            if not is_active:
                return
            nodes = GaugeMetricFamily("colony_cluster_nodes", "Instances by role and state (active controller only).",
                                      labels=["role", "state"])
            tally = Tally((str(r.role), str(r.state)) for r in records())
            roles = {role for role, _ in tally}
            for role in sorted(roles):
                for state in NodeState:  # every state, zeros included, so a panel never goes blank
                    nodes.add_metric([role, str(state)], float(tally.get((role, str(state)), 0)))
            yield nodes

        return collect
