"""The SIP farm with a real softphone: baresip (Debian ``baresip-core``), two of them, alice and
bob, each in a config directory of its own, on loopback only, with no audio device (a sine
tone as the microphone, a null bridge as the speaker), driven over baresip's ``ctrl_tcp``
interface (JSON in netstrings: commands answered by token, and events -- the registration
and call states baresip itself reports).  They register with digest auth over UDP, TCP and
TLS (the farm's certificate from a local CA, which baresip is given -- though baresip 1.0.0
does not check a server's certificate at all: it registered with an unrelated CA; the
farm's chain is verified in ``test_transports.py``), call across two farm members,
hang up, and unregister when they quit; a user's two devices ring together (CANCEL, answer,
decline); a member is SIGKILLed under registered phones, which carry on through the other
(DNS SRV), under a call it did not route, which goes on, and under a phone's connection,
which a call to it then finds gone at once.  The credentials contract is answered here, as
the admin API would (as in ``test_sipfarm.py``).  Skipped without baresip, a failure in CI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from cluster_harness import FAST_TIMINGS, wait_until
from colony.bus import names
from colony.tlsfiles import ensure_local_ca
from tools import free_ports, need_tool

from colony_sipfarm.farm import _hash
from test_sipfarm import DOMAIN, PASSWORDS, bindings, serve_credentials

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACED = re.compile(r"^(UDP|TCP|TLS) [0-9.]+:\d+ -> [0-9.]+:\d+$", re.MULTILINE)   # a message in baresip's SIP trace


@pytest.fixture(autouse=True)
def _baresip() -> str:
    """Skipped (a failure in CI) before a farm is started for nothing."""
    return need_tool("baresip", "baresip-core")


async def start_farm(cluster, tmp_path, **env: str) -> tuple[list[dict], Path]:
    """Two members with the TLS certificate of a local CA (as `colony up` makes one); their
    listeners as `colony status` shows them, and the CA the phones trust."""
    await serve_credentials(await cluster.client())
    tls = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    for n in (1, 2):
        cluster.start("sipfarm", f"sipfarm-{n}", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                      COLONY_TLS_CERT_FILE=str(tls.cert), COLONY_TLS_KEY_FILE=str(tls.key),
                      # Phones here re-register every few seconds (a refresh is part of the test).
                      COLONY_SIP_MIN_EXPIRES="10", **env)
    views = [await cluster.wait_state(f"sipfarm-{n}", "READY", timeout=60) for n in (1, 2)]
    return [v.addresses for v in views], tls.ca


@pytest.fixture
async def farm(cluster, tmp_path):
    yield await start_farm(cluster, tmp_path)


def proxy_uri(addresses: dict, transport: str) -> str:
    """The member's listener for ``transport`` as a phone's outbound proxy."""
    host, _, port = addresses["sip_tls" if transport == "tls" else "sip"].rpartition(":")
    return f"sip:{host}:{port};transport={transport}"


class Softphone:
    """One baresip process and its control connection.

    Events baresip sends (``REGISTER_OK``, ``CALL_INCOMING``, ``CALL_ESTABLISHED``,
    ``CALL_CLOSED``...) are kept in order; a test waits for the next one of a type with a
    deadline.  Registration is polled with ``reginfo`` (the first REGISTER goes out before
    the control connection is up, so its event may come before anyone listens)."""

    def __init__(self, home: Path, user: str, transport: str, proxies: list[str], ca: Path,
                 regint: int = 3600, dns: str | None = None, answermode: str = "auto") -> None:
        self.home, self.user, self.transport = home, user, transport
        self.proxies, self.ca, self.regint, self.dns = proxies, ca, regint, dns
        self.answermode = answermode
        self.ctrl_port = free_ports(1)[0]
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self._changed = asyncio.Condition()
        self._pending: dict[str, asyncio.Future] = {}
        self._tokens = 0
        self._reader_task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # No sound card: ausine is the microphone (48 kHz stereo only, resampled for G.711),
        # aubridge the speaker and ringer.  Loopback only: SIP, RTP and the control port.
        (self.home / "config").write_text("\n".join([
            "poll_method epoll",
            "sip_listen 127.0.0.1:0",
            f"sip_cafile {self.ca}",
            "net_interface 127.0.0.1",
            *([f"dns_server {self.dns}"] if self.dns else []),
            "call_local_timeout 120",
            "call_max_calls 4",
            "audio_source ausine,440",
            "ausrc_srate 48000",
            "ausrc_channels 2",
            "audio_player aubridge,speaker",
            "audio_alert aubridge,speaker",
            "module_path /usr/lib/baresip/modules",
            "module g711.so",
            "module ausine.so",
            "module aubridge.so",
            "module_tmp account.so",
            "module_app menu.so",       # the commands: dial, hangup, reginfo, quit
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "",
        ]))
        outbound = ";".join(f'outbound{"" if i == 0 else i + 1}="{uri}"' for i, uri in enumerate(self.proxies))
        (self.home / "accounts").write_text(
            f"<sip:{self.user}@{DOMAIN};transport={self.transport}>;auth_pass={PASSWORDS[self.user]};"
            f"{outbound + ';' if outbound else ''}regint={self.regint};answermode={self.answermode}\n")

    async def start(self) -> Softphone:
        self.write_config()
        self.proc = await asyncio.create_subprocess_exec(
            need_tool("baresip", "baresip-core"), "-f", str(self.home), "-s",     # -s: the SIP trace, for failures
            stdin=asyncio.subprocess.DEVNULL, stdout=open(self.home / "log", "wb"), stderr=asyncio.subprocess.STDOUT)

        async def connected():
            assert self.proc.returncode is None, f"baresip exited {self.proc.returncode}:\n{self.log()}"
            try:
                return await asyncio.open_connection("127.0.0.1", self.ctrl_port)
            except OSError:
                return None
        reader, self._writer = await wait_until(connected, 30, f"{self.user}'s baresip control port", interval=0.1)
        self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        while chunk := await reader.read(65536):
            buffer += chunk
            while b":" in buffer:                      # netstrings: <length>:<JSON>,
                length, _, rest = buffer.partition(b":")
                if len(rest) < int(length) + 1:
                    break
                message, buffer = json.loads(rest[:int(length)]), rest[int(length) + 1:]
                if message.get("response") and (future := self._pending.pop(message.get("token"), None)):
                    future.set_result(message)
                elif message.get("event"):
                    async with self._changed:
                        self.events.append(message)
                        self._changed.notify_all()

    async def command(self, command: str, params: str = "", timeout: float = 20) -> str:
        self._tokens += 1
        token = f"t{self._tokens}"
        future = self._pending[token] = asyncio.get_running_loop().create_future()
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(b"%d:%s," % (len(body), body))
        answer = await asyncio.wait_for(future, timeout)
        assert answer["ok"], f"{command} {params}: {answer}\n{self.log()}"
        return ANSI.sub("", answer.get("data", ""))

    async def event(self, kind: str, after: int = 0, timeout: float = 30, **match: str) -> dict:
        """The first event of ``kind`` (and ``match``ing fields) from index ``after`` on."""
        def found():
            return next((e for e in self.events[after:]
                         if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())), None)
        deadline = time.monotonic() + timeout
        async with self._changed:
            while (event := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.user}: no {kind} {match or ''} within {timeout}s; events: "
                                         f"{[e.get('type') for e in self.events]}\n{self.log()}")
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    pass
        return event

    async def registered(self, timeout: float = 30) -> str:
        """``reginfo`` once it says OK for the account (every registration of it, one per proxy)."""
        async def ok():
            info = await self.command("reginfo")
            line = next((ln for ln in info.splitlines() if self.aor in ln), "")
            return info if " OK " in line and "ERR" not in line else None
        return await wait_until(ok, timeout, f"{self.user} to be registered", interval=0.2)

    async def quit(self, timeout: float = 30) -> int:
        """``quit``: baresip unregisters (REGISTER with Expires 0) and exits."""
        self._writer.write(b'%d:%s,' % (len(b'{"command":"quit"}'), b'{"command":"quit"}'))
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.user}'s baresip did not quit within {timeout}s\n{self.log()}") from None
        return self.proc.returncode

    async def stop(self) -> None:
        if self._reader_task:
            self._reader_task.cancel()
        if self._writer:
            self._writer.close()
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def transports(self) -> set[str]:
        """The transports of every SIP message baresip sent or received (its ``-s`` trace)."""
        return set(TRACED.findall(self.log(tail=None)))

    def log(self, tail: int | None = 6000) -> str:
        path = self.home / "log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return ANSI.sub("", text)[-tail:] if tail else ANSI.sub("", text)


@pytest.fixture
async def phones():
    """Softphones started by a test, stopped (killed if need be) after it."""
    started: list[Softphone] = []

    async def start(*args, **kwargs) -> Softphone:
        phone = Softphone(*args, **kwargs)
        started.append(phone)
        return await phone.start()
    yield start
    for phone in started:
        await phone.stop()


async def dialog_record(cluster, call_id: str) -> bytes | None:
    """The call's metering record (written at the INVITE 2xx, deleted by the BYE), if any."""
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_SIP_BINDINGS)
    try:
        entry = await kv.get(names.sip_dialog_key(_hash(call_id)))
    except KeyNotFoundError:
        return None
    return entry.value or None


async def contacts(cluster, user: str) -> list[dict]:
    """The user's live bindings in the farm's registrar (expired ones are left for the next write)."""
    now = time.time()
    return [b for b in await bindings(cluster, user) if b.get("expires_at", now + 1) > now]


async def call_and_hang_up(cluster, caller: Softphone, callee: Softphone) -> None:
    """``caller`` dials ``callee``, who answers on its own (answermode=auto); both see the call
    established and the farm has its record; the caller hangs up, both see the call end and
    the record is gone."""
    mark_caller, mark_callee = len(caller.events), len(callee.events)
    await caller.command("dial", callee.aor)
    established = await caller.event("CALL_ESTABLISHED", mark_caller, direction="outgoing")
    call_id = established["id"]                     # baresip's call id is the SIP Call-ID
    await callee.event("CALL_ESTABLISHED", mark_callee, direction="incoming", id=call_id)
    assert "ESTABLISHED" in await caller.command("listcalls")
    await wait_until(lambda: dialog_record(cluster, call_id), 30, "the call's record in sip_bindings")

    await caller.command("hangup")
    await caller.event("CALL_CLOSED", mark_caller, id=call_id)
    closed = await callee.event("CALL_CLOSED", mark_callee, id=call_id)
    assert "peer" in closed.get("param", ""), closed       # ended by the caller's BYE, not a timeout

    async def record_gone() -> bool:
        return await dialog_record(cluster, call_id) is None
    await wait_until(record_gone, 30, "the call's record to be deleted by the BYE")


@pytest.mark.parametrize("alice_transport, bob_transport",
                         [("udp", "udp"), ("tcp", "tcp"), ("tls", "tls"), ("udp", "tls")])
async def test_two_softphones_register_call_across_members_and_unregister(
        farm, cluster, phones, tmp_path, alice_transport, bob_transport):
    addresses, ca = farm
    # alice's proxy is member 1, bob's member 2: the call crosses the farm.
    alice = await phones(tmp_path / "alice", "alice", alice_transport, [proxy_uri(addresses[0], alice_transport)], ca)
    bob = await phones(tmp_path / "bob", "bob", bob_transport, [proxy_uri(addresses[1], bob_transport)], ca)
    for phone, member in ((alice, "sipfarm-1"), (bob, "sipfarm-2")):
        info = await phone.registered()
        assert "Colony SIP farm" in info, info         # the farm's 200 names itself (Server)
        [binding] = await contacts(cluster, phone.user)
        assert binding["contact"].startswith(f"sip:{phone.user}") and "@127.0.0.1:" in binding["contact"]
        assert binding["transport"] == phone.transport.upper() and binding["member"] == member, binding

    await call_and_hang_up(cluster, alice, bob)
    await call_and_hang_up(cluster, bob, alice)       # and back: the other member's Record-Route
    # Every message of a phone went over the transport it chose, its dialogs' ACKs and BYEs
    # too: they follow the farm's Record-Route, which once named the UDP port for everyone
    # (a TLS phone's BYE went out as a plain datagram).
    for phone in (alice, bob):
        assert phone.transports() == {phone.transport.upper()}, phone.log()

    # Quitting unregisters (REGISTER, Expires: 0): the binding goes at once.
    for phone in (alice, bob):
        assert await phone.quit() == 0

        async def unbound(user=phone.user) -> bool:
            return await contacts(cluster, user) == []
        await wait_until(unbound, 30, f"{phone.user}'s binding to be removed")




async def test_a_softphone_refreshes_its_registration_before_it_expires(farm, cluster, phones, tmp_path):
    addresses, ca = farm
    alice = await phones(tmp_path / "alice", "alice", "udp", [proxy_uri(addresses[0], "udp")], ca, regint=10)
    await alice.registered()
    [first] = await contacts(cluster, "alice")
    mark = len(alice.events)
    # baresip re-REGISTERs (same Call-ID, next CSeq) ahead of the 10 s it was given; the
    # farm writes it (moved by more than a tenth of the lifetime, sip_refresh_write_slack).
    await alice.event("REGISTER_OK", mark, timeout=30)

    async def refreshed():
        [binding] = await contacts(cluster, "alice")
        return binding if binding["cseq"] > first["cseq"] else None
    binding = await wait_until(refreshed, 30, "the refresh in the registrar")
    assert binding["call_id"] == first["call_id"] and binding["expires_at"] > first["expires_at"]
    assert binding["contact"] == first["contact"]


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_softphones_carry_on_through_the_other_member_when_theirs_is_sigkilled(
        farm, cluster, phones, tmp_path, dns_server, transport):
    """The phones find the farm by DNS SRV (RFC 3263; ``_sip._tcp``, for TLS ``_sips._tcp``):
    member 1 first, member 2 behind it.  Member 1 is SIGKILLed under both; at their next
    refresh their connection attempt to it is refused, baresip takes the next SRV target,
    and calls work through member 2."""
    addresses, ca = farm
    service, listener = ("_sips._tcp", "sip_tls") if transport == "tls" else ("_sip._tcp", "sip")
    for n, member in enumerate(addresses, 1):
        host, _, port = member[listener].rpartition(":")
        dns_server.add(f"{service}.{DOMAIN}. 60 IN SRV {n * 10} 0 {port} sip{n}.{DOMAIN}.",
                       f"sip{n}.{DOMAIN}. 60 IN A {host}")
    alice = await phones(tmp_path / "alice", "alice", transport, [], ca, regint=10, dns=dns_server.address)
    bob = await phones(tmp_path / "bob", "bob", transport, [], ca, regint=10, dns=dns_server.address)

    async def held_by(member: str) -> bool:
        found = [await contacts(cluster, user) for user in ("alice", "bob")]
        return all(len(c) == 1 and c[0]["member"] == member for c in found)
    for phone in (alice, bob):
        await phone.registered()
    await wait_until(lambda: held_by("sipfarm-1"), 30, "both phones registered at member 1")
    await call_and_hang_up(cluster, alice, bob)

    cluster.nodes["sipfarm-1"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-1"].process.wait(10)
    # Until its refresh a phone's binding names the dead member, which held its connection
    # (a call to it then fails: 430 Flow Failed, RFC 5626 §5.3, heard as 480 by the caller);
    # baresip refreshes within 10 s.
    await wait_until(lambda: held_by("sipfarm-2"), 60, "both phones re-registered at member 2", interval=0.5)
    for phone in (alice, bob):
        await phone.registered()
    await call_and_hang_up(cluster, alice, bob)
    await call_and_hang_up(cluster, bob, alice)
    for phone in (alice, bob):
        assert phone.transports() == {transport.upper()}, phone.log()



async def test_a_call_outlives_the_sigkill_of_the_member_that_did_not_route_it(farm, cluster, phones, tmp_path):
    """alice (member 1) calls bob (registered at member 2): member 1 took the INVITE and is in
    the Record-Route; member 2 is SIGKILLed mid-call.  The call goes on and ends cleanly:
    over UDP nothing of it lives on member 2 (the dialog's requests go to bob's Contact)."""
    addresses, ca = farm
    alice = await phones(tmp_path / "alice", "alice", "udp", [proxy_uri(addresses[0], "udp")], ca)
    bob = await phones(tmp_path / "bob", "bob", "udp", [proxy_uri(addresses[1], "udp")], ca)
    for phone in (alice, bob):
        await phone.registered()
    mark_alice, mark_bob = len(alice.events), len(bob.events)
    await alice.command("dial", bob.aor)
    call_id = (await alice.event("CALL_ESTABLISHED", mark_alice, direction="outgoing"))["id"]
    await bob.event("CALL_ESTABLISHED", mark_bob, id=call_id)
    await wait_until(lambda: dialog_record(cluster, call_id), 30, "the call's record in sip_bindings")

    cluster.nodes["sipfarm-2"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-2"].process.wait(10)
    assert "ESTABLISHED" in await alice.command("listcalls")
    await alice.command("hangup")
    await alice.event("CALL_CLOSED", mark_alice, id=call_id)
    closed = await bob.event("CALL_CLOSED", mark_bob, id=call_id)
    assert "peer" in closed.get("param", ""), closed

    async def record_gone() -> bool:
        return await dialog_record(cluster, call_id) is None
    await wait_until(record_gone, 30, "the call's record to be deleted by the BYE")



@pytest.mark.parametrize("hangs_up", ["caller", "callee"])
async def test_a_call_is_ended_by_either_phone_after_the_member_that_routed_it_was_sigkilled(
        cluster, phones, tmp_path, dns_server, hangs_up):
    """The farm names itself ``acme.example`` in its Record-Route (sip_record_route_host), whose
    DNS SRV records (``_sip._udp``) list member 1 first and member 2 behind it.  Both phones (UDP)
    register at member 1, alice calls bob through it, and member 1 is SIGKILLed.  The phone that
    hangs up sends its BYE to the name (RFC 3263): member 1 does not answer, so when the BYE's
    transaction times out (Timer F, 32 s) baresip takes the next SRV target, member 2, which
    routes it by the Route's signature -- the other phone sees the call end and its record
    goes.  With the member's own address in the Record-Route the BYE went to the dead member
    only, and the other phone stayed in the call."""
    addresses, ca = await start_farm(cluster, tmp_path, COLONY_SIP_RECORD_ROUTE_HOST=DOMAIN)
    for n, member in enumerate(addresses, 1):
        host, _, port = member["sip"].rpartition(":")
        dns_server.add(f"_sip._udp.{DOMAIN}. 60 IN SRV {n * 10} 0 {port} sip{n}.{DOMAIN}.",
                       f"sip{n}.{DOMAIN}. 60 IN A {host}")
    alice = await phones(tmp_path / "alice", "alice", "udp", [], ca, dns=dns_server.address)
    bob = await phones(tmp_path / "bob", "bob", "udp", [], ca, dns=dns_server.address)
    for phone in (alice, bob):
        await phone.registered()
    assert [b["member"] for user in ("alice", "bob") for b in await contacts(cluster, user)] == ["sipfarm-1"] * 2

    mark_alice, mark_bob = len(alice.events), len(bob.events)
    await alice.command("dial", bob.aor)
    call_id = (await alice.event("CALL_ESTABLISHED", mark_alice, direction="outgoing"))["id"]
    await bob.event("CALL_ESTABLISHED", mark_bob, id=call_id)
    await wait_until(lambda: dialog_record(cluster, call_id), 30, "the call's record in sip_bindings")
    assert f"Record-Route: <sip:{DOMAIN};transport=udp;lr;cf=sipfarm-1;" in bob.log(tail=None), bob.log()

    cluster.nodes["sipfarm-1"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-1"].process.wait(10)
    ender, other, other_mark = (alice, bob, mark_bob) if hangs_up == "caller" else (bob, alice, mark_alice)
    await ender.command("hangup")
    # Timer F at the dead member, then member 2: well within the deadline on a busy machine.
    closed = await other.event("CALL_CLOSED", other_mark, id=call_id, timeout=120)
    assert "peer" in closed.get("param", ""), closed          # ended by the BYE, not a timeout

    async def record_gone() -> bool:
        return await dialog_record(cluster, call_id) is None
    await wait_until(record_gone, 30, "the call's record to be deleted by the BYE")
    for phone in (alice, bob):
        assert phone.transports() == {"UDP"}, phone.log()



@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_a_phone_whose_connection_died_with_the_member_that_routed_its_call_can_still_hang_up(
        cluster, phones, tmp_path, dns_server, transport):
    """As above over TCP and TLS (``_sip._tcp``, ``_sips._tcp``): alice's connection is with
    member 1, which routed her call, bob's with member 2.  Member 1 is SIGKILLed; alice's BYE to
    the name is refused there at once, goes to member 2 on a new connection, and out on bob's.
    (bob's BYE could not reach alice: her connection died with member 1, and the farm does not
    dial a flow's phone -- it fails with 430 until she registers again.)"""
    addresses, ca = await start_farm(cluster, tmp_path, COLONY_SIP_RECORD_ROUTE_HOST=DOMAIN)
    service, listener = ("_sips._tcp", "sip_tls") if transport == "tls" else ("_sip._tcp", "sip")
    for n, member in enumerate(addresses, 1):
        host, _, port = member[listener].rpartition(":")
        dns_server.add(f"{service}.{DOMAIN}. 60 IN SRV {n * 10} 0 {port} sip{n}.{DOMAIN}.",
                       f"sip{n}.{DOMAIN}. 60 IN A {host}")
    alice = await phones(tmp_path / "alice", "alice", transport, [proxy_uri(addresses[0], transport)], ca,
                         dns=dns_server.address)
    bob = await phones(tmp_path / "bob", "bob", transport, [proxy_uri(addresses[1], transport)], ca,
                       dns=dns_server.address)
    for phone in (alice, bob):
        await phone.registered()
    mark_alice, mark_bob = len(alice.events), len(bob.events)
    await alice.command("dial", bob.aor)
    call_id = (await alice.event("CALL_ESTABLISHED", mark_alice, direction="outgoing"))["id"]
    await bob.event("CALL_ESTABLISHED", mark_bob, id=call_id)
    await wait_until(lambda: dialog_record(cluster, call_id), 30, "the call's record in sip_bindings")
    assert f"<sip:{DOMAIN};transport={transport};lr;cf=sipfarm-1;" in bob.log(tail=None), bob.log()

    cluster.nodes["sipfarm-1"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-1"].process.wait(10)
    await alice.command("hangup")
    closed = await bob.event("CALL_CLOSED", mark_bob, id=call_id, timeout=60)
    assert "peer" in closed.get("param", ""), closed

    async def record_gone() -> bool:
        return await dialog_record(cluster, call_id) is None
    await wait_until(record_gone, 30, "the call's record to be deleted by the BYE")
    for phone in (alice, bob):
        assert phone.transports() == {transport.upper()}, phone.log()



async def test_two_devices_of_one_user_ring_together_and_a_cancel_an_answer_or_a_decline_reaches_both(
        farm, cluster, phones, tmp_path):
    """bob on two devices (one on UDP at member 2, one on TCP at member 1), answering by hand;
    alice asks for a registration shorter than the farm's shortest and gets it at the farm's
    Min-Expires (423, RFC 3261 §10.2.8).  An INVITE forks to both; alice's CANCEL stops both
    ringing; one device answering cancels the other; both declining gets alice one 486; a
    user that does not exist gets 404 (one with no device 480: test_registrar_semantics.py)."""
    addresses, ca = farm
    alice = await phones(tmp_path / "alice", "alice", "udp", [proxy_uri(addresses[0], "udp")], ca, regint=5)
    desk = await phones(tmp_path / "desk", "bob", "udp", [proxy_uri(addresses[1], "udp")], ca, answermode="manual")
    mobile = await phones(tmp_path / "mobile", "bob", "tcp", [proxy_uri(addresses[0], "tcp")], ca, answermode="manual")
    assert "Expires 10s" in await alice.registered()           # 423, then the farm's 10 s
    for phone in (desk, mobile):
        await phone.registered()
    assert sorted(b["transport"] for b in await contacts(cluster, "bob")) == ["TCP", "UDP"]

    async def ringing_both() -> list[int]:
        marks = [len(p.events) for p in (alice, desk, mobile)]
        await alice.command("dial", "sip:bob@acme.example")
        call_id = (await desk.event("CALL_INCOMING", marks[1]))["id"]
        await mobile.event("CALL_INCOMING", marks[2], id=call_id)
        return marks

    marks = await ringing_both()                               # alice gives up: CANCEL to both
    await alice.command("hangup")
    for phone, mark in ((desk, marks[1]), (mobile, marks[2])):
        await phone.event("CALL_CLOSED", mark)

    marks = await ringing_both()                               # mobile answers: desk is cancelled
    await mobile.command("accept")
    established = await alice.event("CALL_ESTABLISHED", marks[0])
    await desk.event("CALL_CLOSED", marks[1], id=established["id"])
    await mobile.command("hangup")
    await alice.event("CALL_CLOSED", marks[0], id=established["id"])

    marks = await ringing_both()                               # both decline: alice hears one 486
    await desk.command("hangup")
    await mobile.command("hangup")
    closed = await alice.event("CALL_CLOSED", marks[0])
    assert closed["param"].startswith("486"), closed

    mark = len(alice.events)
    await alice.command("dial", "sip:nobody@acme.example")
    closed = await alice.event("CALL_CLOSED", mark)
    assert closed["param"].startswith("404"), closed
    for phone in (alice, desk, mobile):      # the mobile's ACK and BYE too: its own Record-Route
        assert phone.transports() == {phone.transport.upper()}, phone.log()



async def test_a_call_to_a_phone_whose_members_connection_died_fails_at_once(farm, cluster, phones, tmp_path):
    """alice is on TCP at member 1; member 1 is SIGKILLed, and her connection with it.  Until
    she registers again her binding names that flow: a call to her fails at once (430 Flow
    Failed, RFC 5626 §5.3, which the caller hears as 480: §11.5) -- right after the kill, when
    the bus says nobody reads member 1's relay subject any more, and later, when its heartbeat
    is stale.  The INVITE was published to the dead member's relay subject, and the caller
    rang into silence until Timer C (200 s)."""
    addresses, ca = farm
    alice = await phones(tmp_path / "alice", "alice", "tcp", [proxy_uri(addresses[0], "tcp")], ca)
    bob = await phones(tmp_path / "bob", "bob", "udp", [proxy_uri(addresses[1], "udp")], ca)
    for phone in (alice, bob):
        await phone.registered()
    cluster.nodes["sipfarm-1"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-1"].process.wait(10)

    async def call_fails() -> None:
        mark = len(bob.events)
        await bob.command("dial", alice.aor)
        closed = await bob.event("CALL_CLOSED", mark, timeout=30)     # Timer C would be 200 s
        assert closed["param"].startswith("480"), closed
    await call_fails()          # member 1's heartbeat still fresh: the bus's "no responders"

    async def member_1_stale() -> bool:
        view = (await cluster.view()).get("sipfarm-1")
        ttl = timedelta(seconds=float(FAST_TIMINGS["COLONY_NODE_TTL"]) + 0.5)
        return view is None or datetime.fromisoformat(view.heartbeat_at) < datetime.now(timezone.utc) - ttl
    await wait_until(member_1_stale, 30, "member 1's heartbeat to go stale", interval=0.2)
    await call_fails()          # not relayed at all
