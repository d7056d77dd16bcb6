"""A memory probe for bench/soak.py, loaded into every Python process of `colony up` through
PYTHONPATH (only there: it is for measuring, never for production).

SIGUSR1 the first time starts ``tracemalloc`` (10 frames), so only what is allocated from then
on is traced -- start it after a warm-up and what stays traced at the end is what the load
left behind.  Each later SIGUSR1 writes a snapshot to ``$COLONY_SOAK_SNAPSHOTS/<pid>-<n>.snap``
(``tracemalloc.Snapshot.load`` reads it; bench/soak.py diffs the first and the last).
Nothing else changes in the process: no handler is installed when the variable is unset.
"""
import os
import signal

_dir = os.environ.get("COLONY_SOAK_SNAPSHOTS")
if _dir:
    import tracemalloc

    _taken = [0]

    def _on_usr1(signum, frame):
        if not tracemalloc.is_tracing():
            tracemalloc.start(10)
            return
        _taken[0] += 1
        import gc
        gc.collect()
        path = os.path.join(_dir, f"{os.getpid()}-{_taken[0]}.snap")
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, _on_usr1)
