"""The admin-api process: the FastAPI app under uvicorn, as one cluster member.

Draining it means: new HTTP requests get 503 (problem+json, Retry-After) so the balancer
moves them to another admin-api instance, and the requests in flight finish.
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path

from colony.cluster.node import NodeRuntime
from colony.http_server import EmbeddedHttpServer
from colony.settings import ConfigError, Settings
# Imported with this module, before the node registers and its heartbeat starts: inside
# start() these imports (FastAPI, SQLAlchemy, the routes; 4-6 s on a loaded 2-core machine)
# held the event loop past node_ttl, and a controller declared every starting admin API FAILED.
from colony_admin.app import create_app
from colony_admin.bootstrap import write_bootstrap_token
from colony_admin.monitor import routes as monitor
from colony_admin.observability import ApiMetrics, ObservedApi
from colony_admin.routes import cluster

log = logging.getLogger("colony.admin")


def api_tls_files(settings: Settings) -> tuple[Path | None, Path | None]:
    """The admin API's HTTPS certificate chain and key, loaded once here so that a file that
    does not load is a configuration error naming its setting (uvicorn would read them only
    when the server starts, and say no more than the OS error).  (None, None): plain HTTP."""
    cert, key = settings.api_tls_cert_file, settings.api_tls_key_file
    if cert is None:
        if key is not None:
            raise ConfigError("COLONY_API_TLS_KEY_FILE is set without COLONY_API_TLS_CERT_FILE; "
                              "set the certificate chain too, or unset both for plain HTTP")
        return None, None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"COLONY_API_TLS_CERT_FILE/COLONY_API_TLS_KEY_FILE: cannot load {cert} / "
                          f"{key or '(the key in the same file)'} ({exc}); point them at a PEM certificate "
                          "chain and its private key (one file may hold both)") from None
    return cert, key


class _DrainGate:
    """ASGI middleware: counts requests in flight and refuses new ones while draining."""

    def __init__(self, app, workload: AdminApiWorkload) -> None:
        self.app, self.workload = app, workload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self.workload.accepting:
            body = json.dumps({"type": "about:blank", "title": "Draining", "status": 503,
                               "detail": "this admin-api instance is being drained; retry on another"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/problem+json"), (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.workload.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.workload.in_flight -= 1


class AdminApiWorkload:
    role = "admin-api"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = True
        self.in_flight = 0
        self._http: EmbeddedHttpServer | None = None
        self._feed = None  # the monitor page's follower of the CLUSTER stream

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        # The cluster's first admin API makes the first system-admin token (`colony up` prints it).
        # In a super cluster only the primary region's: the others cannot write PROVISIONING or
        # its keys (mirrors), and the token reaches them through the mirrors.
        if self.settings.region == self.settings.primary:
            written = await write_bootstrap_token(self.settings, runtime.nc)
            if written is not None:
                log.info("bootstrap system-admin token written to %s (mode 0600)", written)
        app = create_app(self.settings, runtime.nc, metrics=runtime.metrics)
        app.state.nc = runtime.nc
        app.include_router(cluster.router)
        self._feed = monitor.install(app, runtime.nc, self.settings.cluster_secret_file,
                                     accepting=lambda: self.accepting)
        app.add_middleware(_DrainGate, workload=self)
        app.add_middleware(ObservedApi, metrics=runtime.metrics.once(ApiMetrics))
        cert_file, key_file = api_tls_files(self.settings)
        self._http = EmbeddedHttpServer(app, self.settings.host, self.settings.api_port, lifespan="on",
                                        tls_cert_file=cert_file, tls_key_file=key_file)
        port = await self._http.start()
        return {"http": f"{self.settings.advertised_host}:{port}"}

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    def active_work(self) -> int:
        return self.in_flight

    async def hand_over(self) -> None:
        return None  # HTTP requests are short; the balancer retries elsewhere

    async def stop(self) -> None:
        if self._http:
            await self._http.stop()
        if self._feed:
            await self._feed.stop()
