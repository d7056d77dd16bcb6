"""`colony queue`: the outbound queue for operators (``colony.outbound.queue``).

- ``colony queue list [--destination D]``   waiting messages: sequence, destination, sender, recipients, age, attempts
- ``colony queue status``                   per destination: messages, recipients, oldest, most attempts
- ``colony queue show SEQ``                 one message's envelope and state
- ``colony queue retry SEQ...``             try now (the back-off is dropped)
- ``colony queue delete SEQ... --yes``      remove without a DSN

Talks to the bus directly (``--nats``, else the cluster of ``--data-dir``), as ``colony dlq`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from colony.cli._bus import fail, run_on_bus
from colony.outbound.queue import OutboundQueue, QueueEntryNotFound

queue_app = typer.Typer(help="Outbound queue: mail waiting for remote delivery.", no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where `colony up` keeps everything it writes.", envvar="COLONY_DATA_DIR")]
NatsOpt = Annotated[Optional[str], typer.Option("--nats", help="Bus URL; default: the cluster started from --data-dir, else COLONY_NATS_URL.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = 1) -> None:
    fail(message, code)


def _run(nats: str | None, data_dir: Path, work):
    return run_on_bus(nats, data_dir, OutboundQueue, work, (QueueEntryNotFound,), "the outbound queue")


@queue_app.command("list")
def list_(data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None,
          destination: Annotated[Optional[str], typer.Option(help="Only this destination domain.")] = None,
          limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
          as_json: JsonOpt = False) -> None:
    """Messages waiting for remote delivery, oldest first."""
    entries = _run(nats, data_dir, lambda q: q.list(destination, limit))
    rows = [e.summary() for e in entries]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("seq", "destination", "from", "recipients", "queued at", "attempts", "next attempt")
    for r in rows:
        table.add_row(str(r["seq"]), escape(r["destination"]), escape(r["from"] or "<>"),
                      escape(", ".join(r["recipients"])), r["queued_at"], str(r["attempts"]), r["next_attempt"] or "now")
    console.print(table if rows else "the outbound queue is empty")


@queue_app.command("status")
def status(data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Per destination: messages and recipients waiting, the oldest, the most attempts."""
    rows = _run(nats, data_dir, lambda q: q.destinations())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("destination", "messages", "recipients", "oldest", "most attempts")
    for name, r in sorted(rows.items()):
        table.add_row(escape(name), str(r["messages"]), str(r["recipients"]), r["oldest"], str(r["max_attempts"]))
    console.print(table if rows else "the outbound queue is empty")


@queue_app.command("show")
def show(seq: int, data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None) -> None:
    """One waiting message: envelope, state, size."""
    entry = _run(nats, data_dir, lambda q: q.show(seq))
    print(json.dumps(entry.summary(), indent=2))


@queue_app.command("retry")
def retry(seqs: list[int], data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None) -> None:
    """Try these messages now, whatever their back-off says."""
    async def work(q: OutboundQueue):
        return [await q.retry(s) for s in seqs]
    for entry in _run(nats, data_dir, work):
        console.print(f"requeued {entry.mail.message_id} to {entry.mail.destination} as {entry.sequence}")


@queue_app.command("delete")
def delete(seqs: list[int], data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None,
           yes: Annotated[bool, typer.Option("--yes", help="Really delete (no DSN is sent).")] = False) -> None:
    """Remove messages from the queue for good, without telling their senders."""
    if not yes:
        _fail("deleting sends no DSN and cannot be undone; add --yes")

    async def work(q: OutboundQueue):
        for s in seqs:
            await q.delete(s)
    _run(nats, data_dir, work)
    console.print(f"deleted {len(seqs)} message(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
