"""Running a uvicorn server inside a process whose signals and event loop we own.

uvicorn's ``serve()`` installs its own SIGINT/SIGTERM handlers and re-raises the signal when
it stops; a Colony process must instead drain in order first, so the runtime keeps the
signals and tells the server when to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import uvicorn

log = logging.getLogger("colony.http")


class _QuietSignalsServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def main_loop(self) -> None:
        """uvicorn's loop wakes every 0.1 s to look at ``should_exit`` and refreshes its Date
        header every tenth time: ten wake-ups a second in every Colony process, nearly all of
        them idle (an idle mail store's largest single timer).  Here it ticks once a second,
        the Date header's own resolution (``on_tick`` is given tenths, so it refreshes every
        time), and ``EmbeddedHttpServer.stop`` wakes it at once."""
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.exit_requested.wait()
            should_exit = await self.on_tick(counter)


class EmbeddedHttpServer:
    def __init__(self, app, host: str, port: int, lifespan: str = "off", access_log: bool = False,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None) -> None:
        # HTTPS when a certificate is given (the admin API on the management network).
        config = uvicorn.Config(app, host=host, port=port, lifespan=lifespan, log_level="warning",
                                access_log=access_log, timeout_graceful_shutdown=10,
                                ssl_certfile=str(tls_cert_file) if tls_cert_file else None,
                                ssl_keyfile=str(tls_key_file) if tls_key_file else None)
        self.server = _QuietSignalsServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        """Serve in the background; returns the bound port once the socket listens."""
        self._task = asyncio.create_task(self.server.serve(), name="http-server")
        self._task.add_done_callback(self._ended)
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the bind error (port taken, ...)
                raise RuntimeError("http server exited before it started")
            await asyncio.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def _ended(self, task: asyncio.Task) -> None:
        """The server belongs to this object, not to a task owner (it starts before the
        instance registers); a server that dies on its own must still be said out loud."""
        if task.cancelled() or self.server.should_exit:
            return
        exc = task.exception()
        if exc is not None:
            log.error("HTTP server on %s:%s failed", self.server.config.host, self.server.config.port, exc_info=exc)
        else:
            log.error("HTTP server on %s:%s stopped by itself", self.server.config.host, self.server.config.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        self.server.exit_requested.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task
