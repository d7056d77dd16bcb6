"""The cyclic garbage collector of the admin API and projector processes, set once start-up is done.

Both processes allocate heavily during a bulk import (events decoded and built, pydantic
models, rows, bus messages) but hardly any of it forms reference cycles: it is freed by
reference counting at once.  With CPython's default thresholds (700, 10, 10) the collector
still ran a young collection every 700 net allocations of container objects -- ~550 in the
projector and ~850 in the admin API process during a 10,000-account import, 0.56-0.68 s of CPU
each measured with ``gc.callbacks``.  A young generation of 10,000 runs ~280 and ~380 of them,
0.39-0.48 s (bench/README.md, "Provisioning"); what waits for a collection is at most 10,000
objects more, a few MB.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # container allocations between young collections (CPython's default: 700)


def after_start_up() -> None:
    # Everything built so far (modules, routes, models, tables, validators) lives as long as
    # the process: frozen, so full collections do not walk all of it again and again.
    gc.freeze()
    gc.set_threshold(YOUNG, 10, 10)
