"""Commands the controller sends to one instance, and the CLI/admin API sends to the controller.

Wire form (JSON); every reply is a ``Reply``::

    controller -> node   colony.node.cmd.<node>   NodeCommand {"command": "drain", "epoch": 7}
    node -> controller   (reply)                  {"ok": true, "error": null, "status": 200, "data": {<the node's NodeRecord>}}
                                                  {"ok": false, "error": "stale epoch ...", "status": 409, "data": {}}
    anyone -> controller colony.ctl.api           ControllerRequest {"command": "drain", "node": "mailstore-2"}
                                                  ({"command": "whoami"} needs no node)
    controller -> caller (reply)                  drain/ready: the node's reply, passed on unchanged
                                                  whoami: {"ok": true, ..., "data": {"controller": "controller-1", "epoch": 7}}
                                                  refused: {"ok": false, "error": "no instance named ...", "status": 404, "data": {}}
                                                  (400 bad request, 409 not READY/NOT_READY, 503 no longer
                                                  the controller, 504 the node did not answer)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

NodeCommandName = Literal["drain", "ready"]


class NodeCommand(BaseModel):
    command: NodeCommandName
    epoch: int


class ControllerRequest(BaseModel):
    command: Literal["drain", "ready", "whoami"]
    node: str | None = None


class Reply(BaseModel):
    ok: bool
    error: str | None = None
    status: int = 200
    data: dict[str, Any] = {}
