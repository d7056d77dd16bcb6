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


def test_encode_names_each_class_and_version_and_stays_plain_json():
    """``encode`` remembers each class's head: two classes (and a newer version of one) must
    not share it, and the wire form stays one JSON object that the general path reads too."""
    from colony import events as ev

    first = ev.AccountDeleted(address="a@b.example")
    other = ev.AliasDeleted(address="a@b.example")
    for event in (first, other, first, other):  # again, with the heads remembered
        raw = json.loads(event.encode())
        assert (raw["type"], raw["v"]) == (event.type, event.version)
        assert decode(event.encode()) == event
    with pytest.raises(UnknownEventVersion):  # a version bump is read as such, not as version 1
        raw = json.loads(first.encode())
        raw["v"] = 2
        decode(json.dumps(raw).encode())


def test_no_event_class_is_a_subclass_of_another():
    """The provisioning folds (``aggregates.apply``, the read model's row builders, the
    directory's per-class sort) match the hot event classes first; that reordering is only
    harmless while no event class inherits from another."""
    from colony.events import _REGISTRY

    classes = list(_REGISTRY.values())
    assert [(a.__name__, b.__name__) for a in classes for b in classes if a is not b and issubclass(a, b)] == []
