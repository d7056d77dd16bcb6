"""The IMAP session core's CPU per command, in process: no sockets, no edge, no event loop.

    .venv/bin/python bench/imap_core.py [--loops 3000] [--messages 50] [--fsync] [--profile tottime]

One ``Session`` (handed over, as from the edge) on a real ``AccountMail`` in a temporary
directory, the mail store's ``MailStore`` and ``MessageCache`` behind a ``CompositeStore`` as
``imap_server`` builds them per command; the loop of ``bench/imap.py`` (b): SELECT INBOX,
FETCH 1:20 (UID FLAGS BODY.PEEK[HEADER]), FETCH <n> (BODY.PEEK[]), STORE <n> +/-FLAGS
(\\Seen), SEARCH UNSEEN, with that bench's messages.  Prints ``time.process_time`` per
command, overall and per kind (warm-up loops first).  The journal's fsync is stubbed unless
``--fsync`` (its CPU is the kernel's, and its wall time is not what this measures).

What it is for: the session core's share of the store's CPU per operation, measured apart
from the machine's load (the whole bench moves by tens of percent between minutes on a shared
machine).  Compare trees by pointing ``PYTHONPATH`` at a worktree's ``libs`` and
``services/mailstore`` and interleaving runs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap import message  # noqa: E402

from colony.protocols.imap import session as S  # noqa: E402
from colony.protocols.imap.shared import CompositeStore  # noqa: E402
from colony.storage import mailbox as M  # noqa: E402
from colony_mailstore.imap_server import MailStore, MessageCache  # noqa: E402

KINDS = ("SELECT", "FETCH headers", "FETCH body", "STORE flags", "SEARCH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--fsync", action="store_true", help="keep the journal's fsync")
    parser.add_argument("--profile", choices=("tottime", "cumulative"), help="cProfile the measured loops")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="imap-core-")
    try:
        mail = M.AccountMail(Path(tmp), 1)
        mail.open()
        for n in range(args.messages):
            mail.append("INBOX", message(n))
        mail.commit()
        if not args.fsync:
            M.os.fsync = lambda fd: None     # (the process's os: this bench syncs nothing else)
        cache, marks = MessageCache(), S.RecentMarks()
        session = S.Session(time.monotonic, account="bench@bench.test", handed_over=True)

        def drive(line: bytes) -> None:
            session.receive_data(line)
            while (action := session.next_action()) is not None:
                if isinstance(action, S.NeedStore):
                    store = CompositeStore(MailStore(mail, marks, None, cache), "bench@bench.test", [],
                                           lambda owner: None)
                    session.run(store)

        rnd = random.Random(1)

        def commands() -> list[bytes]:
            return [b"a SELECT INBOX\r\n", b"b FETCH 1:20 (UID FLAGS BODY.PEEK[HEADER])\r\n",
                    b"c FETCH %d (BODY.PEEK[])\r\n" % rnd.randint(1, args.messages),
                    b"d STORE %d %sFLAGS (\\Seen)\r\n" % (rnd.randint(1, args.messages), rnd.choice([b"+", b"-"])),
                    b"e SEARCH UNSEEN\r\n"]

        for _ in range(args.warmup):
            for line in commands():
                drive(line)
        spent = dict.fromkeys(KINDS, 0.0)
        profile = cProfile.Profile() if args.profile else None
        if profile:
            profile.enable()
        for _ in range(args.loops):
            for kind, line in zip(KINDS, commands()):
                start = time.process_time()
                drive(line)
                spent[kind] += time.process_time() - start
        if profile:
            profile.disable()
            pstats.Stats(profile).sort_stats(args.profile).print_stats(40)
        total = sum(spent.values())
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"CPU per command {total / args.loops / len(KINDS) * 1e6:.1f} us over {args.loops} loops "
              f"({args.messages} messages; load {load}); per kind: "
              + ", ".join(f"{k} {v / args.loops * 1e6:.0f} us" for k, v in spent.items()))
        mail.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
