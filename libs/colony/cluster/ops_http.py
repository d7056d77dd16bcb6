"""Each instance's small operations listener: liveness, readiness, Prometheus metrics.

``/readyz`` answers 503 unless the instance is READY, so an L4/L7 balancer's health check
stops sending new connections to a draining instance by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from colony.cluster.membership import NodeState
from colony.http_server import EmbeddedHttpServer
from colony.metrics import CONTENT_TYPE, gauge

if TYPE_CHECKING:
    from colony.cluster.node import NodeRuntime


class OpsServer:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self._http: EmbeddedHttpServer | None = None
        runtime.metrics.add_callback(self._node_gauges)

    def _node_gauges(self):
        rt = self.runtime
        labels = {"node": rt.node_id, "role": rt.role}
        yield gauge("colony_node_state", "1 for the state this instance is in.", labels, 0,
                    extra=[({"state": str(s)}, float(rt.state == s)) for s in NodeState])
        yield gauge("colony_node_active_work", "Sessions, requests or jobs in progress.", labels,
                    rt.workload.active_work())
        yield gauge("colony_node_controller_epoch", "Highest controller epoch this instance has seen.", labels,
                    rt.epochs.highest)

    def app(self) -> Starlette:
        rt = self.runtime

        async def healthz(_: Request):
            return JSONResponse({"status": "ok", "node": rt.node_id, "state": rt.state})

        async def readyz(_: Request):
            ready = rt.state == NodeState.READY
            return JSONResponse({"ready": ready, "node": rt.node_id, "state": rt.state}, status_code=200 if ready else 503)

        async def metrics(_: Request):
            return Response(rt.metrics.render(), media_type=CONTENT_TYPE)

        return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)])

    async def start(self, host: str, port: int, advertised_host: str) -> str:
        self._http = EmbeddedHttpServer(self.app(), host, port)
        bound = await self._http.start()
        return f"{advertised_host}:{bound}"

    async def stop(self) -> None:
        if self._http:
            await self._http.stop()
