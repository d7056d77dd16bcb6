"""The cluster monitor in the admin API: the same view as `colony status`, and drain/ready."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from colony.cluster.control import ask_controller
from colony.cluster.view import NodeView, cluster_view

router = APIRouter(prefix="/v1/cluster", tags=["cluster"])


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


@router.get("/nodes", response_model=list[NodeView], summary="Every instance, its role and state, the controller and the backup")
async def list_nodes(request: Request) -> list[NodeView]:
    return await cluster_view(request.app.state.nc)


async def _command(request: Request, command: str, node_id: str):
    reply = await ask_controller(request.app.state.nc, command, node_id)
    if not reply.ok:
        titles = {404: "Unknown instance", 409: "Wrong state", 503: "No controller", 504: "Instance did not answer"}
        return _problem(reply.status, titles.get(reply.status, "Command failed"), reply.error or "")
    return reply.data


@router.post("/nodes/{node_id}/drain", summary="Make Not-Ready: the instance takes no new work and empties")
async def drain_node(node_id: str, request: Request):
    return await _command(request, "drain", node_id)


@router.post("/nodes/{node_id}/ready", summary="Make Ready: the instance takes work again")
async def ready_node(node_id: str, request: Request):
    return await _command(request, "ready", node_id)
