"""One way for an operator command to talk to the cluster's bus: connect as `colony status`
does (the cluster started from --data-dir, its operator identity), run one piece of work,
close, and turn failures into a clear message instead of a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from colony.bus.connection import connect

err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def run_on_bus(nats: str | None, data_dir: Path, make, work, expected: tuple[type[Exception], ...], what: str):
    """``work(make(jetstream))``; an ``expected`` error is the operator's answer, anything else
    means the bus is not reachable (``what`` names what we tried to reach)."""
    from colony.cli import main as cli  # registered by main: import it late, not at module load

    url = cli.resolve_nats_url(nats, data_dir)
    seed = cli.operator_seed(nats, data_dir)
    overrides = {"nats_url": url, "nats_connect_timeout": 3}
    if seed is not None:
        overrides["nats_nkey_seed_file"] = seed

    async def main():
        nc = await connect(cli._settings(**overrides), name="colony-cli", persistent=False)
        try:
            return await work(make(nc.jetstream()))
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except expected as exc:
        fail(str(exc))
    except typer.Exit:
        raise
    except Exception as exc:
        fail(f"cannot reach {what} on {url}: {exc or type(exc).__name__}. Is the cluster up (`colony up`)?")
