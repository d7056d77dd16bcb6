"""Commands the controller sends to one instance, and the CLI/admin API sends to the controller.

Wire form (JSON)::

    controller -> node   colony.node.cmd.<node>   {"command": "drain", "epoch": 7}
    node -> controller   (reply)                  {"ok": true, "state": "NOT_READY", "drained": false}
    anyone -> controller colony.ctl.api           {"command": "drain", "node": "mailstore-2"}
    controller -> caller (reply)                  {"ok": true, "epoch": 7, "node": {...}}
                                                  {"ok": false, "error": "...", "status": 404}
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
