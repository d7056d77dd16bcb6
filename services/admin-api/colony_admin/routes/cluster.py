"""The cluster monitor in the admin API: the same view as `colony status`, and drain/ready.

System administrators only; drain and ready are audited like every other change.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from colony.cluster.control import ask_controller
from colony.cluster.view import NodeView, cluster_view, regions_view
from colony_admin.auth.roles import require_system
from colony_admin.deps import Admin, Caller, client_addr

router = APIRouter(prefix="/v1/cluster", tags=["cluster"])

_TITLES = {404: "Unknown instance", 409: "Wrong state", 503: "No controller", 504: "Instance did not answer"}


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": _TITLES.get(status, "Command failed"), "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


@router.get("/nodes", response_model=list[NodeView],
            summary="Every instance, its role and state, the controller and the backup (as `colony status --json`); "
                    "in a super cluster every region's, each with its region")
async def list_nodes(ctx: Admin, who: Caller, response: Response) -> list[NodeView]:
    require_system(who, "see the cluster")
    regions = ctx.settings.region_list
    if not regions:
        return await cluster_view(ctx.nc)
    views, unreachable = await regions_view(ctx.nc, ctx.settings.region, regions)
    if unreachable:
        # A cut-off region is named, not shown as a region without instances.
        response.headers["Colony-Unreachable-Regions"] = ",".join(unreachable)
    return views


async def _command(request: Request, ctx: Admin, who: Caller, command: str, node_id: str):
    require_system(who, f"{command} an instance")
    reply = await ask_controller(ctx.nc, command, node_id)
    await ctx.provisioning.audit(who, f"cluster.{command}", node_id, domain=None, remote_addr=client_addr(request),
                                 outcome="ok" if reply.ok else f"failed: {reply.error}")
    if not reply.ok:
        return _problem(reply.status, reply.error or "")
    return reply.data


@router.post("/nodes/{node_id}/drain", responses={404: {}, 409: {}, 503: {}, 504: {}},
             summary="Make Not-Ready: the instance takes no new work and empties")
async def drain_node(node_id: str, request: Request, ctx: Admin, who: Caller):
    return await _command(request, ctx, who, "drain", node_id)


@router.post("/nodes/{node_id}/ready", responses={404: {}, 409: {}, 503: {}, 504: {}},
             summary="Make Ready: the instance takes work again")
async def ready_node(node_id: str, request: Request, ctx: Admin, who: Caller):
    return await _command(request, ctx, who, "ready", node_id)
