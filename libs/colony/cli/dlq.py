"""`colony dlq`: the dead-letter stream for operators (``colony.queue.deadletter``).

- ``colony dlq list [--stream MAIL]``       dead jobs, oldest first: sequence, queue, subject, job id, why
- ``colony dlq show SEQ [--body]``          one dead job: where it came from, why, its headers and body
- ``colony dlq replay SEQ... | --all``      put jobs back on their original subject (marked
  ``Colony-Replayed``, same job id) and remove them from the dead letters
- ``colony dlq purge [SEQ...] [--stream S] --yes``   drop dead jobs for good

Talks to the bus directly (``--nats``, else the cluster of ``--data-dir``), as ``colony status`` does.
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
from colony.queue.deadletter import DeadLetter, DeadLetterError, DeadLetters

dlq_app = typer.Typer(help="Dead-letter queue: jobs that failed max_deliver times or were rejected.",
                      no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where `colony up` keeps everything it writes.", envvar="COLONY_DATA_DIR")]
NatsOpt = Annotated[Optional[str], typer.Option("--nats", help="Bus URL; default: the cluster started from --data-dir, else COLONY_NATS_URL.")]
StreamOpt = Annotated[Optional[str], typer.Option("--stream", help="Only dead jobs of this work-queue stream, e.g. MAIL.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = 1) -> None:
    fail(message, code)


def _run(nats: str | None, data_dir: Path, work):
    return run_on_bus(nats, data_dir, DeadLetters, work, (DeadLetterError,), "the dead letters")


def _summary(d: DeadLetter) -> dict:
    return {"seq": d.dlq_sequence, "stream": d.stream, "subject": d.subject, "sequence": d.sequence,
            "job_id": d.job_id, "consumer": d.consumer, "deliveries": d.deliveries, "reason": d.reason,
            "at": d.at.isoformat(), "size": len(d.data)}


@dlq_app.command("list")
def list_(data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None, stream: StreamOpt = None,
          limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
          as_json: JsonOpt = False) -> None:
    """Dead jobs, oldest first."""
    letters = _run(nats, data_dir, lambda dlq: dlq.list(stream=stream, limit=limit))
    if as_json:
        print(json.dumps([_summary(d) for d in letters], indent=2))
        return
    table = Table(title=f"dead letters{f' of {stream}' if stream else ''}", title_justify="left")
    for col in ("seq", "queue", "subject", "job id", "deliveries", "dead since", "reason"):
        table.add_column(col)
    for d in letters:
        # Everything here came from the jobs: text, never rich markup.
        table.add_row(str(d.dlq_sequence), escape(d.stream), escape(d.subject), escape(d.job_id), str(d.deliveries),
                      d.at.strftime("%Y-%m-%d %H:%M:%S"), escape(d.reason))
    console.print(table if letters else "no dead letters")


@dlq_app.command()
def show(seq: Annotated[int, typer.Argument(help="Sequence, as `colony dlq list` shows it.")],
         data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None, as_json: JsonOpt = False,
         body: Annotated[bool, typer.Option("--body", help="Write the job's data to stdout, byte for byte.")] = False) -> None:
    """One dead job: where it came from, why it died, its headers and (a preview of) its data."""
    d = _run(nats, data_dir, lambda dlq: dlq.get(seq))
    if body:
        sys.stdout.buffer.write(d.data)
        return
    if as_json:
        print(json.dumps({**_summary(d), "headers": d.headers,
                          "data_preview": d.data[:2048].decode("utf-8", "replace")}, indent=2))
        return
    for key, value in _summary(d).items():
        console.print(f"[bold]{key}[/bold]: {escape(str(value))}", highlight=False)
    for key, value in d.headers.items():
        console.print(f"  {key}: {value}", highlight=False, markup=False)
    preview = d.data[:2048].decode("utf-8", "replace")
    console.print("--- data" + (f" (first 2048 of {len(d.data)} bytes; --body for all)" if len(d.data) > 2048 else ""))
    console.print(preview, highlight=False, markup=False)


@dlq_app.command()
def replay(seqs: Annotated[Optional[list[int]], typer.Argument(help="Sequences to replay.")] = None,
           all_: Annotated[bool, typer.Option("--all", help="Replay every dead job (of --stream).")] = False,
           stream: StreamOpt = None, data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None) -> None:
    """Put dead jobs back on their original subject; they leave the dead letters once queued."""
    if not seqs and not all_:
        _fail("name the sequences to replay (see `colony dlq list`), or --all", 2)

    async def work(dlq: DeadLetters):
        chosen = list(seqs or [])
        if all_:
            chosen += [d.dlq_sequence for d in await dlq.list(stream=stream, limit=1_000_000)]
        done = []
        for seq in dict.fromkeys(chosen):
            done.append((seq, await dlq.replay(seq)))
        return done

    for seq, new in _run(nats, data_dir, work):
        console.print(f"dead letter {seq} replayed (queued again as sequence {new})")


@dlq_app.command()
def purge(seqs: Annotated[Optional[list[int]], typer.Argument(help="Sequences to drop; none: all (of --stream).")] = None,
          stream: StreamOpt = None, data_dir: DataDir = Path("colony-data"), nats: NatsOpt = None,
          yes: Annotated[bool, typer.Option("--yes", help="Do not ask before dropping them all.")] = False) -> None:
    """Drop dead jobs for good."""
    if not seqs and not yes:
        what = f"every dead job of {stream}" if stream else "every dead job"
        if not typer.confirm(f"Drop {what}? They cannot be replayed afterwards."):
            raise typer.Exit(1)

    async def work(dlq: DeadLetters):
        if seqs:
            for seq in seqs:
                await dlq.delete(seq)
            return len(seqs)
        return await dlq.purge(stream)

    console.print(f"{_run(nats, data_dir, work)} dead letter(s) dropped")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
