import json

import pytest

from colony.events import NodeStateChanged, UnknownEvent, UnknownEventVersion, decode


def test_round_trip_keeps_type_version_and_fields():
    event = NodeStateChanged(node_id="edge-1", role="edge", old="READY", new="NOT_READY", reason="drain")
    again = decode(event.encode())
    assert again == event
    raw = json.loads(event.encode())
    assert raw["type"] == "cluster.node_state" and raw["v"] == 1


def test_unknown_version_is_refused_not_guessed():
    raw = json.loads(NodeStateChanged(node_id="a", role="edge", old=None, new="READY").encode())
    raw["v"] = 99
    with pytest.raises(UnknownEventVersion, match="version 99"):
        decode(json.dumps(raw).encode())


@pytest.mark.parametrize("data", [b"", b"[]", b'{"type": "nope", "v": 1}', b"not json"])
def test_garbage_is_refused(data):
    with pytest.raises(UnknownEvent):
        decode(data)


def test_unknown_fields_are_refused():
    raw = json.loads(NodeStateChanged(node_id="a", role="edge", old=None, new="READY").encode())
    raw["surprise"] = 1
    with pytest.raises(ValueError):
        decode(json.dumps(raw).encode())
