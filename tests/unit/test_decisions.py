"""Controller decisions: their keys and wire format (the fencing itself: tests/integration/cluster/test_decisions.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from colony.cluster.decisions import NodeFailed, decode_decision


def test_decisions_round_trip_through_their_wire_format():
    decision = NodeFailed(epoch=7, by="controller-2", node_id="edge-1", role="edge", judged_revision=412,
                          reason="no heartbeat for 5s")
    assert decode_decision(decision.encode()) == decision
    assert decision.key() == "decision.node-failed.edge-1"
    assert decode_decision(b'{"kind": "from-the-future", "epoch": 1, "by": "x"}') is None
    assert decode_decision(b"not json") is None


def test_a_decision_needs_the_epoch_it_was_made_under():
    with pytest.raises(ValidationError):
        NodeFailed(epoch=0, by="c1", node_id="edge-1", role="edge", judged_revision=1, reason="x")
