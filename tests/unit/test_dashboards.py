"""The Grafana dashboards in infra/grafana/dashboards are exactly what generate.py writes
(so the Prometheus test, which checks the generator's queries, checks the shipped files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from colony.cluster.membership import NodeState
from colony.cluster.view import NodeView
from colony.monitoring import targets_for

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_files_are_generated():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "infra/grafana/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = {p.name for p in (ROOT / "infra/grafana/dashboards").glob("*.json")}
    assert shipped == set(module.dashboards()), "run python infra/grafana/generate.py"
    for name, d in module.dashboards().items():
        assert (ROOT / "infra/grafana/dashboards" / name).read_text() == module.render(d), \
            f"{name} differs from the generator: run python infra/grafana/generate.py"


def view(node_id: str, role: str, state: NodeState, ops: str | None) -> NodeView:
    return NodeView(id=node_id, role=role, state=state, pid=1, host="h", version="1", incarnation=1, controller=False,
                    backup=False, epoch=1, addresses={"ops": ops} if ops else {}, load={}, drained=False,
                    started_at="2026-01-01T00:00:00+00:00", heartbeat_at="2026-01-01T00:00:00+00:00", reason="")


def test_file_sd_targets_are_the_live_instances_with_an_ops_listener():
    groups = targets_for([
        view("mailstore-2", "mailstore", NodeState.READY, "127.0.0.1:2602"),
        view("edge-1", "edge", NodeState.NOT_READY, "127.0.0.1:2601"),
        view("mailstore-1", "mailstore", NodeState.FAILED, "127.0.0.1:2603"),
        view("sipfarm-1", "sipfarm", NodeState.STOPPED, "127.0.0.1:2604"),
        view("controller-1", "controller", NodeState.STARTING, None),
    ])
    assert groups == [{"targets": ["127.0.0.1:2601"], "labels": {"job": "colony-edge"}},
                      {"targets": ["127.0.0.1:2602"], "labels": {"job": "colony-mailstore"}}]
