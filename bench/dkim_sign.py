"""CPU per DKIM signature of outbound mail: ``dkim.sign`` (dkimpy) against Colony's signer.

    .venv/bin/python bench/dkim_sign.py [--messages 300] [--bits 2048]

Signs the same typical outbound message (about 3 KB, eight signed headers) with a freshly
generated RSA key, in this process, two ways, alternating in rounds so both see the same
machine load:

* ``dkimpy dkim.sign``: what ``colony.outbound.signing.sign`` called before: pure-Python
  RSA, the PEM parsed on every call;
* ``Colony signer``: ``colony.outbound.signing.sign``: dkimpy's parsing and relaxed
  canonicalisation, the RSA step in ``cryptography`` on a key parsed once and cached.

CPU is this process's user+system time (``time.process_time``) per signature; signatures/s
is wall-clock.  The two outputs are checked to be byte-identical for the same ``t=``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

import dkim
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "libs"))
from colony.outbound import signing  # noqa: E402

MESSAGE = (b"From: Alice Example <alice@example.com>\r\nTo: bob@remote.test, carol@remote.test\r\n"
           b"Cc: dave@remote.test\r\nSubject: Quarterly figures and the\r\n plan for next week\r\n"
           b"Date: Wed, 25 Nov 2026 21:00:00 +0000\r\nMessage-ID: <20261125210000.1@example.com>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + b"Some text of a line of mail, as usual.  \r\n" * 70)


def dkimpy_sign(message: bytes, key: signing.DkimKey) -> bytes:
    return dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                     canonicalize=(b"relaxed", b"relaxed"), include_headers=signing.headers_to_sign(message))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="signatures per signer")
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two signers")
    args = parser.parse_args()
    key = signing.generate_key("example.com", "bench", args.bits)

    with mock.patch("time.time", return_value=1_790_000_000):
        same = dkimpy_sign(MESSAGE, key) == signing.sign(MESSAGE, key, now=1_790_000_000)
    signers = {"dkimpy dkim.sign": lambda: dkimpy_sign(MESSAGE, key),
               "Colony signer": lambda: signing.sign(MESSAGE, key)}
    totals = {name: [0.0, 0.0] for name in signers}     # cpu, wall
    per_round = max(1, args.messages // args.rounds)
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, run in signers.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(per_round):
                run()
            totals[name][0] += time.process_time() - cpu
            totals[name][1] += time.perf_counter() - wall
    load_after = os.getloadavg()[0]

    count = per_round * args.rounds
    table = Table(title=f"DKIM rsa-sha256 relaxed/relaxed, {args.bits}-bit key, {len(MESSAGE)} B message, "
                        f"{count} signatures each")
    for column in ("signer", "signatures/s", "CPU ms / signature"):
        table.add_column(column, justify="right" if column != "signer" else "left")
    for name, (cpu, wall) in totals.items():
        table.add_row(name, f"{count / wall:,.0f}", f"{cpu / count * 1000:.2f}")
    console = Console()
    console.print(table)
    ratio = totals["dkimpy dkim.sign"][0] / totals["Colony signer"][0]
    console.print(f"byte-identical output: {same}; CPU ratio {ratio:.1f}x; "
                  f"load average {load_before:.1f} -> {load_after:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
