"""The read-model position announcements: their wire form, and how an admin API follows them."""

from __future__ import annotations

import json
from types import SimpleNamespace

from colony_admin.projections.position import ReadModelPosition, RemoteReadModel


def test_the_wire_form_is_what_the_docstring_shows():
    sent = ReadModelPosition(projection="readmodel", seq=1234, node="projector-1").encode()
    assert json.loads(sent) == {"projection": "readmodel", "seq": 1234, "node": "projector-1"}
    assert ReadModelPosition.decode(sent) == ReadModelPosition(projection="readmodel", seq=1234, node="projector-1")


async def test_the_position_only_moves_forward_and_ignores_what_is_not_its_own():
    remote = RemoteReadModel(nc=None, engine=None, name="readmodel")  # no bus: fed by hand

    async def hear(data: bytes) -> None:
        await remote._on_position(SimpleNamespace(data=data, subject="colony.admin.readmodel.position"))

    await hear(ReadModelPosition(projection="readmodel", seq=10, node="p1").encode())
    assert remote.position == 10 and remote.heard.is_set()
    await hear(ReadModelPosition(projection="readmodel", seq=7, node="p2").encode())  # a slower projector
    assert remote.position == 10
    await hear(ReadModelPosition(projection="usage", seq=99).encode())  # another projection's
    await hear(b"not json")
    await hear(b'{"projection": "readmodel", "seq": -1}')
    assert remote.position == 10
    assert await remote.wait_for(10, timeout=0.01)
    assert not await remote.wait_for(11, timeout=0.01)
