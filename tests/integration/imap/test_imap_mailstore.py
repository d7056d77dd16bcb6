"""IMAP against a mail store process on a real nats-server: imaplib and imapclient on the
store's ``imap-direct`` listener (LOGIN checked through the auth contract, answered here by
a stand-in for the admin API), and the edge's signed hand-off on ``imap-inner``."""

from __future__ import annotations

import asyncio
import signal
import imaplib
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from imapclient import IMAPClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mailstore"))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)

from colony.bus import names  # noqa: E402
from colony.contracts import handoff  # noqa: E402
from colony.contracts.auth import AuthCheckReply, AuthCheckRequest, AuthFailure  # noqa: E402

BOB = f"bob@{DOMAIN}"
PASSWORD = "s3cret"


async def _auth_responder(nc):
    async def answer(msg):
        req = AuthCheckRequest.from_bytes(msg.data)
        if req.user.lower() == BOB and req.password == PASSWORD:
            reply = AuthCheckReply.granted(BOB, DOMAIN, {})
        else:
            reply = AuthCheckReply.refused(AuthFailure.INVALID)
        await msg.respond(reply.to_bytes())
    return await nc.subscribe(names.AUTH_CHECK, cb=answer)


@pytest.fixture
async def imap(world, tmp_path):
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    sub = await _auth_responder(world.nc)
    # (an outbound port of 0, which the harness gives every *_port, is refused by Settings)
    world.start("mailstore-1", COLONY_IMAP_DIRECT_LOGIN="true", COLONY_CLUSTER_SECRET_FILE=str(secret),
                COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    ids = [await world.publish([BOB]) for _ in range(3)]
    await wait_until(lambda: _stored(world, ids), 60, "three messages in bob's INBOX")
    host, _, port = view.addresses["imap-direct"].rpartition(":")
    yield world, host, int(port), view, secret
    await sub.unsubscribe()


async def _stored(world, ids):
    return world.stored_ids(BOB) == {i: 1 for i in ids}


def _imaplib_session(host: str, port: int) -> dict:
    out = {}
    with imaplib.IMAP4(host, port, timeout=30) as m:
        out["caps"] = m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login(BOB, "wrong")
        m.login(BOB, PASSWORD)
        typ, data = m.select("INBOX")
        out["exists"] = int(data[0])
        typ, data = m.fetch("1", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out["fetch"] = data
        m.store("1", "+FLAGS", "(\\Flagged)")
        out["flagged"] = m.search(None, "FLAGGED")[1][0]
        out["uid_search"] = m.uid("SEARCH", None, "ALL")[1][0]
        typ, data = m.copy("2", "Archive")
        out["copy"] = (typ, m.untagged_responses.get("COPYUID"))
        typ, data = m._simple_command("MOVE", "3", "Trash")
        out["move"] = typ
        m.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = m.expunge()
        out["expunged"] = data
        out["after"] = int(m.select("INBOX")[1][0])
        out["archive"] = int(m.select("Archive", readonly=True)[1][0])
        out["trash"] = int(m.select("Trash", readonly=True)[1][0])
        m.logout()
    return out


async def test_imaplib_select_fetch_store_search_copy_move_expunge(imap):
    world, host, port, view, _ = imap
    r = await asyncio.to_thread(_imaplib_session, host, port)
    assert "IDLE" in r["caps"] and "MOVE" in r["caps"] and "UIDPLUS" in r["caps"]
    assert r["exists"] == 3
    assert b"Subject: test" in r["fetch"][0][1]
    assert r["flagged"] == b"1"
    assert r["uid_search"] == b"1 2 3"
    assert r["copy"][0] == "OK"
    assert r["move"] == "OK"
    assert r["after"] == 1 and r["archive"] == 1 and r["trash"] == 1

    async def metrics():
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{view.addresses['ops']}/metrics", timeout=10).read().decode())
        return text if "colony_mailstore_imap_sessions 0.0" in text else None   # the session has ended
    text = await wait_until(metrics, 30, "the IMAP session to end")
    assert 'colony_mailstore_imap_logins_total{how="login",result="ok"} 1.0' in text
    assert 'colony_mailstore_imap_logins_total{how="login",result="refused"} 1.0' in text


def _two_sessions_and_idle(host: str, port: int, deliver) -> dict:
    out = {}
    a = IMAPClient(host, port, ssl=False, timeout=30)
    b = IMAPClient(host, port, ssl=False, timeout=30)
    try:
        for c in (a, b):
            c.login(BOB, PASSWORD)
            c.select_folder("INBOX")
        a.add_flags([1], [b"\\Seen", b"$Label1"])
        out["b_noop"] = b.noop()[1]
        a.delete_messages([1])
        a.expunge()
        out["b_after_expunge"] = b.noop()[1]
        b.idle()
        started = time.monotonic()
        deliver()
        responses = []
        while time.monotonic() - started < 60 and not any(r[1] == b"EXISTS" for r in responses):
            responses += b.idle_check(timeout=5)
        out["idle"] = responses
        out["idle_seconds"] = time.monotonic() - started
        b.idle_done()
        out["search"] = b.search(["UNSEEN"])
    finally:
        for c in (a, b):
            try:
                c.logout()
            except Exception:
                pass
    return out


async def test_two_sessions_see_each_other_and_idle_hears_a_delivery(imap):
    world, host, port, view, _ = imap
    loop = asyncio.get_running_loop()

    def deliver():
        asyncio.run_coroutine_threadsafe(world.publish([BOB]), loop).result(30)

    r = await asyncio.to_thread(_two_sessions_and_idle, host, port, deliver)
    assert any(x[1] == b"FETCH" and b"$Label1" in x[2][1] for x in r["b_noop"] if len(x) > 2), r["b_noop"]
    assert (1, b"EXPUNGE") in r["b_after_expunge"], r["b_after_expunge"]
    assert any(x == (3, b"EXISTS") for x in r["idle"]), r["idle"]
    # Woken by the commit, not by a poll: the delivery's whole path (publish, queue, fsync)
    # bounds this, with room for a loaded machine.
    assert r["idle_seconds"] < 30, r["idle_seconds"]
    assert r["search"] == [2, 3, 4]      # imapclient searches by UID


def _raw(host: str, port: int, first: bytes, then: bytes = b"") -> bytes:
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(first)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
        if then:
            s.sendall(then)
            while b"t2 OK" not in data and b"t2 NO" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data


async def test_handoff_starts_an_authenticated_session_and_refuses_forgeries(imap):
    world, host, port, view, secret = imap
    inner_host, _, inner_port = view.addresses["imap-inner"].rpartition(":")
    key = handoff.load_secret(secret)
    line = handoff.sign(key, "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    data = await asyncio.to_thread(_raw, inner_host, int(inner_port), line, b"t2 SELECT INBOX\r\n")
    assert data.startswith(b"OK [CAPABILITY IMAP4rev1"), data
    assert b"* 3 EXISTS" in data and b"t2 OK [READ-WRITE]" in data
    forged = handoff.sign(b"x" * 32, "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    data = await asyncio.to_thread(_raw, inner_host, int(inner_port), forged)
    assert data.startswith(b"NO "), data


def _pipelined_then_closed(host: str, port: int, first: bytes) -> bytes:
    """The hand-off, commands right behind it and the end of the connection (no LOGOUT), all
    sent before the store answers anything; then everything the store sends until it closes."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(first + b"t2 SELECT INBOX\r\nt3 FETCH 1:3 (UID)\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


async def test_commands_sent_with_the_handoff_and_an_early_close_are_all_answered(imap):
    # The store reads a session's bytes in its connection's own callback once the hand-off
    # line is taken; bytes and an end of file that came before that must not be lost.
    world, host, port, view, secret = imap
    inner_host, _, inner_port = view.addresses["imap-inner"].rpartition(":")
    line = handoff.sign(handoff.load_secret(secret), "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    data = await asyncio.wait_for(asyncio.to_thread(_pipelined_then_closed, inner_host, int(inner_port), line), 30)
    assert data.startswith(b"OK [CAPABILITY IMAP4rev1"), data
    assert b"t2 OK [READ-WRITE]" in data and data.count(b" FETCH (UID ") == 3, data
    # ...and the end of file ended the session: the store closed (else recv times out).
    assert data.endswith(b"t3 OK FETCH completed\r\n"), data


def _silent_session(host: str, port: int, first: bytes) -> tuple[bytes, float]:
    """A handed-over session that runs two commands a second apart, then stays silent: what
    the store sends until it closes, and how long after the last command it closed."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(first)
        data = _read_until(s, b"\r\n", 30)
        for tag in (b"t2", b"t3"):
            time.sleep(1.0)
            s.sendall(tag + b" NOOP\r\n")
            data += _read_until(s, tag + b" OK", 30)
        last = time.monotonic()
        while chunk := s.recv(65536):
            data += chunk
        return data, time.monotonic() - last


async def test_a_silent_session_is_logged_out_after_the_idle_timeout_from_its_last_command(world, tmp_path):
    # The store arms one autologout timer per session and arms it again when it fires before
    # the deadline (each command moves the deadline later): the BYE must still come a whole
    # timeout after the last command, not after the first.
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_IMAP_IDLE_TIMEOUT="2.5",
                COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    inner_host, _, inner_port = view.addresses["imap-inner"].rpartition(":")
    line = handoff.sign(handoff.load_secret(secret), "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    data, after = await asyncio.wait_for(asyncio.to_thread(_silent_session, inner_host, int(inner_port), line), 40)
    assert b"t2 OK" in data and b"t3 OK" in data and b"* BYE Autologout" in data, data
    assert after >= 2.4, after      # measured from t3, although a timer was armed at t2 and before


async def test_a_client_in_idle_hears_still_here_long_before_the_autologout(world, tmp_path):
    """The session's timer was armed for the autologout (30 s here) before IDLE began; the
    store arms it again for IDLE's "* OK Still here" (every 0.5 s here), which a NAT between
    client and server needs to keep the connection."""
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_IMAP_IDLE_TIMEOUT="30",
                COLONY_IMAP_IDLE_NOTIFY="0.5", COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    inner_host, _, inner_port = view.addresses["imap-inner"].rpartition(":")
    line = handoff.sign(handoff.load_secret(secret), "imap", BOB, "198.51.100.7", int(time.time() * 1000))

    def idling() -> bytes:
        with socket.create_connection((inner_host, int(inner_port)), timeout=30) as s:
            s.sendall(line)
            _read_until(s, b"\r\n", 30)
            s.sendall(b"s SELECT INBOX\r\n")
            _read_until(s, b"s OK", 30)
            s.sendall(b"i IDLE\r\n")
            data = _read_until(s, b"+ idling", 30)
            s.settimeout(20)      # well short of the 30 s autologout
            while data.count(b"* OK Still here") < 2 and (chunk := s.recv(65536)):
                data += chunk
            s.sendall(b"DONE\r\n")
            return data + _read_until(s, b"i OK", 30)
    data = await asyncio.wait_for(asyncio.to_thread(idling), 60)
    assert b"* OK Still here\r\n" in data and b"i OK IDLE terminated" in data and b"BYE" not in data, data


def _one_read_per_command(host: str, port: int) -> list[bytes]:
    """Each command's whole answer as the first recv after it (one write by the store)."""
    answers = []
    with socket.create_connection((host, port), timeout=30) as s:
        _read_until(s, b"\r\n", 30)
        s.sendall(b"a LOGIN " + BOB.encode() + b" " + PASSWORD.encode() + b"\r\n")
        _read_until(s, b"a OK", 30)
        for line in (b"b SELECT INBOX", b"c FETCH 1:3 (UID FLAGS BODY.PEEK[HEADER])", b"d SEARCH UNSEEN"):
            s.sendall(line + b"\r\n")
            answers.append(s.recv(1 << 20))
    return answers


async def test_a_commands_responses_leave_the_store_in_one_write(imap):
    # Line by line, every response was a write, a TCP segment, and at the edge a read and a
    # write of its own: a FETCH of 20 headers cost the edge 21 relays instead of one.
    world, host, port, view, _ = imap
    select, fetch, search = await asyncio.to_thread(_one_read_per_command, host, port)
    assert select.startswith(b"* FLAGS") and select.endswith(b"b OK [READ-WRITE] SELECT completed\r\n"), select
    assert fetch.count(b" FETCH (") == 3 and fetch.endswith(b"c OK FETCH completed\r\n"), fetch
    assert search.startswith(b"* SEARCH") and search.endswith(b"d OK SEARCH completed\r\n"), search


def _hostile(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=30) as s:
        s.recv(4096)
        s.sendall(b"a LOGIN " + BOB.encode() + b" " + PASSWORD.encode() + b"\r\n")
        s.sendall(b"b SELECT INBOX\r\nc FETCH 1:4294967295 (FLAGS)\r\nd UID FETCH 1:4294967295 UID\r\n"
                  b"e APPEND INBOX {99999999999}\r\nf FETCH 1 BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15]\r\n"
                  + b"g " + b"(" * 5000 + b"\r\n" + b"h NOOP\r\n")
        data = b""
        while b"h OK" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


async def test_hostile_input_gets_protocol_errors(imap):
    world, host, port, view, _ = imap
    data = await asyncio.to_thread(_hostile, host, port)
    assert b"c BAD" in data and b"d OK" in data and b"e NO [TOOBIG]" in data
    assert b"f OK" in data and b"g BAD" in data and b"h OK" in data


def _read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_a_session_whose_account_moves_away_gets_bye(imap):
    world, host, port, view, _ = imap
    sock = await asyncio.to_thread(socket.create_connection, (host, port), 30)
    try:
        await asyncio.to_thread(_read_until, sock, b"\r\n", 30)
        sock.sendall(f"a LOGIN {BOB} {PASSWORD}\r\nb SELECT INBOX\r\n".encode())
        assert b"b OK" in await asyncio.to_thread(_read_until, sock, b"b OK", 30)
        # Another store takes the account (here: its lease vanishes, so the owner's next
        # renewal finds it lost): the session ends cleanly instead of serving stale state.
        kv = await world.nc.jetstream().key_value(names.BUCKET_ACCOUNT_OWNERS)
        await kv.purge(names.account_owner_key(BOB))
        data = await asyncio.to_thread(_read_until, sock, b"* BYE", 60)
        assert b"* BYE [UNAVAILABLE]" in data, data
    finally:
        sock.close()


async def test_a_handoff_for_a_domain_whose_move_is_sealing_is_refused_until_it_flips(imap):
    """An edge whose directory has not seen the seal yet still cannot open a session that
    would change the old copy during the move's last pass: the store refuses the hand-off
    with a temporary failure (IMAP and POP3), and takes it again once the phase moves on."""
    import orjson

    world, host, port, view, secret = imap
    key = handoff.load_secret(secret)
    entry = {"kind": "domain", "name": DOMAIN, "storage": {"account_foldering": "none"},
             "move": {"move_id": "m1", "source": "", "target": "us", "phase": "sealing"}}
    await world.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(entry))

    def attempt(proto: str) -> bytes:
        inner_host, _, inner_port = view.addresses[f"{proto}-inner"].rpartition(":")
        return _raw(inner_host, int(inner_port), handoff.sign(key, proto, BOB, "198.51.100.7", int(time.time() * 1000)))

    async def refused(proto: str, prefix: bytes) -> bool:
        data = await asyncio.to_thread(attempt, proto)
        return data.startswith(prefix) and b"being moved" in data

    # the store's directory cache may hold the entry for a moment: wait for the seal to show
    await wait_until(lambda: refused("imap", b"NO [UNAVAILABLE]"), 30, "IMAP hand-off refused while sealing")
    assert await refused("pop3", b"-ERR [SYS/TEMP]")
    entry["move"]["phase"] = "flipped"
    await world.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(entry))

    async def accepted() -> bool:
        return (await asyncio.to_thread(attempt, "imap")).startswith(b"OK [CAPABILITY")

    await wait_until(accepted, 30, "IMAP hand-off accepted after the flip")


async def test_sealing_a_domains_move_ends_its_open_imap_and_pop3_sessions(imap):
    """The move's last pass needs the source's copy to stop changing: sessions already open
    when the domain's move reaches ``sealing`` end (IMAP ``* BYE``, POP3 ``-ERR`` without
    applying its deletions), so the controller sees none left and can copy the last time."""
    import orjson

    world, host, port, view, secret = imap
    key = handoff.load_secret(secret)
    imap_sock = await asyncio.to_thread(socket.create_connection, (host, port), 30)
    pop_host, _, pop_port = view.addresses["pop3-inner"].rpartition(":")
    pop_sock = await asyncio.to_thread(socket.create_connection, (pop_host, int(pop_port)), 30)
    try:
        await asyncio.to_thread(_read_until, imap_sock, b"\r\n", 30)
        imap_sock.sendall(f"a LOGIN {BOB} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        assert b"+ idling" in await asyncio.to_thread(_read_until, imap_sock, b"+ idling", 30)
        pop_sock.sendall(handoff.sign(key, "pop3", BOB, "198.51.100.7", int(time.time() * 1000)))
        assert (await asyncio.to_thread(_read_until, pop_sock, b"\r\n", 30)).startswith(b"+OK")
        pop_sock.sendall(b"DELE 1\r\n")
        assert b"+OK" in await asyncio.to_thread(_read_until, pop_sock, b"\r\n", 30)

        entry = {"kind": "domain", "name": DOMAIN, "storage": {"account_foldering": "none"},
                 "move": {"move_id": "m1", "source": "", "target": "us", "phase": "sealing"}}
        await world.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(entry))

        imap_data = await asyncio.to_thread(_read_until, imap_sock, b"* BYE", 60)
        assert b"* BYE [UNAVAILABLE]" in imap_data and b"moved to another region" in imap_data, imap_data
        pop_data = await asyncio.to_thread(_read_until, pop_sock, b"\r\n", 60)
        assert pop_data.startswith(b"-ERR [SYS/TEMP]") and b"nothing deleted" in pop_data, pop_data
        assert len(world.state(BOB).box("INBOX").messages) == 3     # the DELE was not applied
    finally:
        imap_sock.close()
        pop_sock.close()


async def test_flag_changes_acknowledged_by_concurrent_sessions_survive_a_sigkill(imap):
    """Four sessions of one account change flags at once (the store commits them on its event
    loop while its commits are quick, in a worker thread otherwise); the store is SIGKILLed
    mid-stream.  Every STORE that got its tagged OK is in the journal the next owner reads."""
    world, host, port, _, _ = imap
    uids = sorted(world.state(BOB).box("INBOX").messages)
    acked: list[tuple[int, str]] = []

    async def session(n: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await reader.readline()

            async def cmd(tag: str, text: str) -> bytes:
                writer.write(f"{tag} {text}\r\n".encode())
                while True:
                    line = await reader.readline()
                    if not line:
                        raise ConnectionError("closed")
                    if line.startswith(tag.encode() + b" "):
                        return line

            assert b" OK" in await cmd("l", f"LOGIN {BOB} {PASSWORD}")
            assert b" OK" in await cmd("s", "SELECT INBOX")
            for i in range(100_000):
                uid, keyword = uids[i % len(uids)], f"k{n}x{i}"
                if (await cmd(f"t{i}", f"UID STORE {uid} +FLAGS.SILENT ({keyword})")).startswith(f"t{i} OK".encode()):
                    acked.append((uid, keyword))
        finally:
            writer.close()

    sessions = [asyncio.create_task(session(n)) for n in range(4)]

    async def enough():
        done = [t for t in sessions if t.done()]
        if done:   # a session that failed before the kill: its error, not a timeout
            await done[0]
        return len(acked) >= 80
    await wait_until(enough, 60, "80 flag changes acknowledged")
    world.cluster.nodes["mailstore-1"].signal(signal.SIGKILL)
    results = await asyncio.gather(*sessions, return_exceptions=True)
    assert all(isinstance(r, (ConnectionError, OSError)) for r in results), results
    box = world.state(BOB).box("INBOX")
    missing = [(uid, kw) for uid, kw in acked if kw not in box.messages[uid].flags]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged flag changes lost: {missing[:5]}"
