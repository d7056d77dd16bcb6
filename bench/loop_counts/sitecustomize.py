"""Counters for bench/smtp_inbound_counts.py, loaded into every Python process of `colony up`
through PYTHONPATH (only there: it wraps asyncio and nats-py internals, for measuring).

Per process, written to ``$COLONY_LOOP_COUNTS/<pid>.json`` at most twice a second while the
event loop runs: ``select`` (event-loop passes), ``nonzero`` (passes that returned I/O
events), ``events``, ``submit`` (executor jobs: the mail store's worker-thread batches),
``handles`` and ``by`` (callbacks run, by task coroutine or callback name), ``kv:<bucket>:<key
head>`` (KV reads), ``bus>kind`` / ``bus<kind`` (messages published / received: pull, ack,
progress, job, status:408 ...).  With ``COLONY_CALL_COUNTS`` a mail store also runs cProfile
on its loop's thread and writes it out on SIGUSR2.  Each wrapper adds CPU: read counts from a counting run, CPU from another.
"""
import json, os, sys, time, selectors
_C = {"select": 0, "events": 0, "submit": 0, "nonzero": 0}
_last = [0.0]
_dir = os.environ["COLONY_LOOP_COUNTS"]
def _dump():
    now = time.monotonic()
    if now - _last[0] < 0.5:
        return
    _last[0] = now
    tmp = f"{_dir}/{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"argv": sys.argv, **_C}, f)
    os.replace(tmp, f"{_dir}/{os.getpid()}.json")
_orig = selectors.EpollSelector.select
def select(self, timeout=None):
    r = _orig(self, timeout)
    _C["select"] += 1
    _C["events"] += len(r)
    if r:
        _C["nonzero"] += 1
    _dump()
    return r
selectors.EpollSelector.select = select
import concurrent.futures.thread as _t
_osub = _t.ThreadPoolExecutor.submit
def submit(self, *a, **k):
    _C["submit"] += 1
    return _osub(self, *a, **k)
_t.ThreadPoolExecutor.submit = submit
if True:  # callbacks by name
    import asyncio.events as _ev
    _H = {}
    _C["handles"] = 0
    _orun = _ev.Handle._run
    def _run(self):
        _C["handles"] += 1
        cb = self._callback
        try:
            owner = getattr(cb, "__self__", None)
            if isinstance(owner, __import__("asyncio").Task):
                name = "task:" + getattr(owner.get_coro(), "__qualname__", "?")
            else:
                name = getattr(cb, "__qualname__", repr(cb)[:40])
        except Exception:
            name = "?"
        _H[name] = _H.get(name, 0) + 1
        return _orun(self)
    _ev.Handle._run = _run
    _C["by"] = _H
if True:  # KV reads by bucket and key
    try:
        import nats.js.kv as _kv
        _og = _kv.KeyValue.get
        async def _get(self, key, *a, **k):
            kk = "kv:" + self._name + ":" + key.split(".")[0]
            _C[kk] = _C.get(kk, 0) + 1
            return await _og(self, key, *a, **k)
        _kv.KeyValue.get = _get
    except Exception as e:
        _C["kverr"] = repr(e)
if True:  # bus messages sent and received, by kind ("bus>" and "bus<" prefixes)
    try:
        import nats.aio.client as _nc
        def _kind_out(subject, payload):
            if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
                return "pull"
            if subject.startswith("$JS.ACK."):
                p = bytes(payload[:4])
                return {b"+WPI": "progress", b"-NAK": "nak", b"+NXT": "next", b"+TER": "term"}.get(p, "ack")
            if subject.startswith("$JS.API."):
                return "jsapi:" + ".".join(subject.split(".")[2:4])
            return ".".join(subject.split(".")[:2])
        _opub = _nc.Client.publish
        async def _publish(self, subject, payload=b"", reply="", headers=None):
            k = "bus>" + _kind_out(subject, payload)
            _C[k] = _C.get(k, 0) + 1
            return await _opub(self, subject, payload, reply, headers)
        _nc.Client.publish = _publish
        _oproc = _nc.Client._process_msg
        async def _process(self, sid, subject, reply, data, headers):
            s = subject.decode(errors="replace") if isinstance(subject, (bytes, bytearray)) else str(subject)
            if headers and b"NATS/1.0 " in bytes(headers[:12]):
                k = "status:" + bytes(headers[9:12]).decode(errors="replace")
            elif reply and bytes(reply[:8]) == b"$JS.ACK.":
                k = "job"
            elif s.startswith("_INBOX."):
                k = "inbox"
            else:
                k = ".".join(s.split(".")[:2])
            k = "bus<" + k
            _C[k] = _C.get(k, 0) + 1
            return await _oproc(self, sid, subject, reply, data, headers)
        _nc.Client._process_msg = _process
    except Exception as e:
        _C["buserr"] = repr(e)
if os.environ.get("COLONY_CALL_COUNTS") and b"colony_mailstore" in open("/proc/self/cmdline", "rb").read():
    # Python calls of the event loop's thread by function, cumulative, written on SIGUSR2 to
    # <dir>/<pid>.calls.<n> (bench/smtp_inbound_counts.py --call-counts diffs two of them).
    import cProfile, marshal, signal
    _prof = cProfile.Profile()
    _snaps = [0]
    def _snap(signum, frame):
        _prof.disable()
        _prof.create_stats()
        stats = {f"{f}:{l}:{n}": (cc, nc, tt, ct) for (f, l, n), (cc, nc, tt, ct, _) in _prof.stats.items()}
        _snaps[0] += 1
        with open(f"{_dir}/{os.getpid()}.calls.{_snaps[0]}", "wb") as out:
            marshal.dump(stats, out)
        _prof.enable()
    signal.signal(signal.SIGUSR2, _snap)
    _prof.enable()
