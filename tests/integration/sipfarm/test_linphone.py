"""The SIP farm with a second real softphone: linphone (Debian ``linphone-cli``), driven through
``linphone-daemon``, the package's scriptable front end (one command a line on a unix socket
in /tmp, ``--pipe``; answers ``Status: Ok``/``Error`` and a body), each phone in a config
directory of its own (a ``linphonerc`` as a user's, HOME pointed there for its database).
No sound card: mediastreamer finds none and runs the calls' audio from and into nothing
(its void source and sink), so no ALSA or PulseAudio device is needed.

Linphone is not baresip (``test_softphones.py``, whose farm, phones and helpers are reused
here): its Contact carries ``+sip.instance`` (RFC 5626/5627) and it says ``Supported:
replaces, outbound, gruu``; it puts a hold on a call by re-INVITE (``a=sendonly``) and
resumes it by another; it re-registers on the interval the 200 names; it writes its
connection's port in a TCP/TLS Contact; it answers a request at the address in its Via
(with rport, where the request came from); it sends CRLF keep-alives on every transport;
and it un-REGISTERs on quit.  Scenarios: registration over UDP, TCP and TLS at one member,
seen by a registrar query at every member; calls with baresip and with linphone across the
two members, hold and resume from either side, hang-up from either side; a wrong password
answered as an unknown user; keep-alives and refreshes keeping one binding; and behind a
real haproxy (TCP, and TLS passed through, PROXY v2) the SIGKILL of the member holding the
phone's connection, after which it registers through the other (its binding replaced by
its ``+sip.instance``) and is called there.  A third phone, twinkle (``twinkle-console``,
driven over its stdin, ALSA's null device for audio), calls linphone and is called by it
over UDP and TCP, holds and retrieves, hangs up and un-REGISTERs.  Skipped without the
phone a test uses, a failure in CI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from pathlib import Path

import pytest

from cluster_harness import wait_until
from colony.protocols.sip.parser import parse_message
from tools import free_ports, need_tool

from test_sipfarm import DOMAIN, PASSWORDS, digest_answer, metric, udp_exchange
from test_softphones import contacts, dialog_record, phones, proxy_uri, start_farm  # noqa: F401 (phones: a fixture)

pytestmark = pytest.mark.slow

SENT = re.compile(r"message sent to \[(UDP|TCP|TLS)://")           # belle-sip's trace of its own messages


@pytest.fixture(autouse=True)
def _linphone() -> str:
    return need_tool("linphone-daemon", "linphone-cli")


@pytest.fixture
async def farm(cluster, tmp_path):
    # Linphone checks the farm's certificate (against the local CA it is given) and the name
    # it dialled: its mbedTLS reads no IP address in a subjectAltName, so a TLS phone is
    # given the farm as ``localhost`` (a DNS name of the certificate), which the members
    # then take as a name of theirs in the phone's preloaded Route (sip_route_aliases).
    yield await start_farm(cluster, tmp_path, COLONY_SIP_ROUTE_ALIASES="localhost")


def linphone_proxy(addresses: dict, transport: str) -> str:
    """The member's listener as linphone's proxy: by name for TLS (above)."""
    uri = proxy_uri(addresses, transport)
    return uri.replace("sip:127.0.0.1:", "sip:localhost:") if transport == "tls" else uri


class Linphone:
    """One linphone-daemon and its control socket.

    The daemon answers one command at a time with one write (``Status: ...`` and a body), so
    a command is a write and the next read.  Its events are queued for ``pop-event``; the
    tests poll states instead (``register-status``, ``call-status``), with deadlines."""

    def __init__(self, home: Path, user: str, transport: str, proxy: str, ca: Path,
                 password: str | None = None, expires: int = 3600, keepalive_ms: int | None = None) -> None:
        self.home, self.user, self.transport, self.proxy, self.ca = home, user, transport, proxy, ca
        self.password = PASSWORDS.get(user, "x") if password is None else password
        self.expires, self.keepalive_ms = expires, keepalive_ms
        # The daemon's socket is /tmp/<name> (it takes a name, not a path).
        self.pipe = f"colony-linphone-{uuid.uuid4().hex[:12]}"
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"

    def write_config(self) -> None:
        (self.home / ".local/share/linphone").mkdir(parents=True, exist_ok=True)
        ports = {t: ("-1" if t == self.transport else "0") for t in ("udp", "tcp", "tls")}
        keepalive = ([f"keepalive_period={self.keepalive_ms}", "tcp_tls_keepalive=1"]
                     if self.keepalive_ms else [])
        (self.home / "linphonerc").write_text("\n".join([
            "[sip]",
            f"sip_port={ports['udp']}",
            f"sip_tcp_port={ports['tcp']}",
            f"sip_tls_port={ports['tls']}",
            "use_ipv6=0",
            "default_proxy=0",
            f"root_ca={self.ca}",
            "verify_server_certs=1",
            "verify_server_cn=1",
            *keepalive,
            "",
            "[rtp]",
            "audio_rtp_port=-1",        # random: two phones on one host
            "video_rtp_port=-1",
            "",
            "[video]",
            "capture=0",
            "display=0",
            "automatically_initiate=0",
            "automatically_accept=0",
            "",
            "[sound]",
            "echocancellation=0",
            "",
            "[proxy_0]",
            f"reg_proxy=<{self.proxy}>",
            f"reg_route=<{self.proxy};lr>",
            f"reg_identity=sip:{self.user}@{DOMAIN}",
            f"reg_expires={self.expires}",
            "reg_sendregister=1",
            "publish=0",
            "",
            "[auth_info_0]",
            f"username={self.user}",
            f"passwd={self.password}",
            f"realm={DOMAIN}",
            f"domain={DOMAIN}",
            "",
        ]))

    async def start(self) -> Linphone:
        self.write_config()
        self.proc = await asyncio.create_subprocess_exec(
            need_tool("linphone-daemon", "linphone-cli"), "--config", str(self.home / "linphonerc"),
            "--pipe", self.pipe, "--log", str(self.home / "log"),
            env={**os.environ, "HOME": str(self.home)},
            stdin=asyncio.subprocess.DEVNULL, stdout=open(self.home / "out", "wb"), stderr=asyncio.subprocess.STDOUT)

        async def connected():
            assert self.proc.returncode is None, f"linphone-daemon exited {self.proc.returncode}:\n{self.log()}"
            try:
                return await asyncio.open_unix_connection(f"/tmp/{self.pipe}")
            except OSError:
                return None
        self._reader, self._writer = await wait_until(connected, 30, f"{self.user}'s linphone socket", interval=0.1)
        return self

    async def command(self, line: str, timeout: float = 20) -> str:
        async with self._lock:
            self._writer.write(line.encode() + b"\n")
            await self._writer.drain()
            answer = (await asyncio.wait_for(self._reader.read(65536), timeout)).decode(errors="replace")
        return answer

    async def ok(self, line: str) -> str:
        answer = await self.command(line)
        assert answer.startswith("Status: Ok"), f"{line}: {answer}\n{self.log()}"
        return answer

    async def registration(self) -> str:
        return re.search(r"State: (\S+)", await self.ok("register-status 1")).group(1)

    async def registered(self, timeout: float = 30) -> None:
        async def ok():
            return await self.registration() == "LinphoneRegistrationOk"
        await wait_until(ok, timeout, f"{self.user}'s linphone to be registered", interval=0.2)

    async def call(self, uri: str) -> int:
        """Dial ``uri``: the call's id in this daemon."""
        return int(re.search(r"Id: (\d+)", await self.ok(f"call {uri}")).group(1))

    async def call_state(self, call_id: int | None = None) -> str:
        answer = await self.command("call-status" if call_id is None else f"call-status {call_id}")
        found = re.search(r"State: (\S+)", answer)
        return found.group(1) if found else "none"

    async def in_state(self, *states: str, call_id: int | None = None, timeout: float = 30) -> str:
        async def probe():
            state = await self.call_state(call_id)
            return state if state in states else None
        try:
            return await wait_until(probe, timeout, f"{self.user}'s call to be {states}", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    async def quit(self, timeout: float = 30) -> int:
        """``quit``: linphone un-REGISTERs (Expires: 0) before it exits."""
        self._writer.write(b"quit\n")
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.user}'s linphone did not quit within {timeout}s\n{self.log()}") from None
        return self.proc.returncode

    async def stop(self) -> None:
        if self._writer:
            self._writer.close()
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        Path(f"/tmp/{self.pipe}").unlink(missing_ok=True)

    def sent(self) -> list[str]:
        """Every SIP message linphone sent, as its log shows them."""
        return re.findall(r"message sent to \[[^\]]*\], size: \[\d+\] bytes\n(.*?)\n\n", self.log(tail=None), re.S)

    def received(self) -> list[str]:
        """Every SIP message linphone received, as its log shows them."""
        return re.findall(r"received \[\d+\] new bytes from \[[^\]]*\]:\n(.*?)\n\n", self.log(tail=None), re.S)

    def transports(self) -> set[str]:
        return set(SENT.findall(self.log(tail=None)))

    def log(self, tail: int | None = 8000) -> str:
        path = self.home / "log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text


@pytest.fixture
async def linphones():
    started: list[Linphone] = []

    async def start(*args, **kwargs) -> Linphone:
        phone = Linphone(*args, **kwargs)
        started.append(phone)
        return await phone.start()
    yield start
    for phone in started:
        await phone.stop()


async def query_bindings(member: str, user: str) -> list[str]:
    """A registrar query (REGISTER without Contact, RFC 3261 §10.2.3) sent to one member as
    ``user`` over UDP: the Contact values of its 200."""
    host, _, port = member.rpartition(":")
    call_id = uuid.uuid4().hex

    def register(cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
                f"From: <sip:{user}@{DOMAIN}>;tag=q{cseq}\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n").encode()
    challenge = parse_message(await udp_exchange((host, int(port)), register(1)))
    assert challenge.status == 401, challenge
    answer = parse_message(await udp_exchange((host, int(port)), register(
        2, digest_answer(challenge, user, "REGISTER", f"sip:{DOMAIN}", "Authorization"))))
    assert answer.status == 200, answer
    return answer.headers.get_all("Contact")


async def call_gone(phone: Linphone, call_id: int, timeout: float = 30) -> None:
    """The daemon forgot the call: it ended (and was released)."""
    async def gone():
        return "No call with such id" in await phone.command(f"call-status {call_id}")
    try:
        await wait_until(gone, timeout, f"{phone.user}'s call {call_id} to end", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{phone.log()}") from None


async def record_gone(cluster, call_id: str) -> None:
    async def gone() -> bool:
        return await dialog_record(cluster, call_id) is None
    await wait_until(gone, 30, "the call's record to be deleted by the BYE")


def sip_call_id(phone: Linphone, method: str = "INVITE") -> str:
    """The Call-ID of the last ``method`` linphone sent."""
    sent = [m for m in phone.sent() if m.startswith(f"{method} ")]
    assert sent, phone.log()
    return re.search(r"^Call-ID: *(\S+)", sent[-1], re.M | re.I).group(1)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_linphone_and_baresip_register_at_two_members_call_hold_resume_hang_up_and_unregister(
        farm, cluster, linphones, phones, tmp_path, transport):
    addresses, ca = farm
    # alice (linphone) at member 1, bob (baresip) at member 2: every call crosses the farm.
    alice = await linphones(tmp_path / "alice", "alice", transport, linphone_proxy(addresses[0], transport), ca)
    bob = await phones(tmp_path / "bob", "bob", transport, [proxy_uri(addresses[1], transport)], ca)
    await alice.registered()
    await bob.registered()
    [binding] = await contacts(cluster, "alice")
    assert binding["member"] == "sipfarm-1" and binding["transport"] == transport.upper(), binding
    assert binding["contact"].startswith("sip:alice@127.0.0.1:"), binding
    # Every member answers a registrar query with alice's binding (one registry on the bus).
    for member in addresses:
        listed = await query_bindings(member["sip"], "alice")
        assert [c.partition(">")[0].lstrip("<") for c in listed] == [binding["contact"]], listed

    # alice calls bob, who answers by himself; she holds (re-INVITE, a=sendonly) and resumes.
    mark = len(bob.events)
    call = await alice.call(bob.aor)
    await alice.in_state("LinphoneCallStreamsRunning", call_id=call)
    sip_id = sip_call_id(alice)
    await bob.event("CALL_ESTABLISHED", mark, direction="incoming", id=sip_id)
    await wait_until(lambda: dialog_record(cluster, sip_id), 30, "the call's record in sip_bindings")
    await alice.ok(f"call-pause {call}")
    await alice.in_state("LinphoneCallPaused", call_id=call)
    assert "a=sendonly" in bob.log(tail=None), bob.log()          # the hold reached bob
    await alice.ok(f"call-resume {call}")
    await alice.in_state("LinphoneCallStreamsRunning", call_id=call)
    reinvites = [m for m in alice.sent() if m.startswith("INVITE ")]
    assert len(reinvites) >= 3 and all(" sip:bob" in m.split("\n", 1)[0] for m in reinvites[-2:]), reinvites
    # bob (the callee) hangs up: his BYE reaches alice through the farm.
    await bob.command("hangup")
    await call_gone(alice, call)
    await record_gone(cluster, sip_id)

    # bob calls alice; she answers; she hangs up.
    mark = len(bob.events)
    await bob.command("dial", alice.aor)

    async def ringing() -> bool:
        return "IncomingReceived" in await alice.call_state()
    await wait_until(ringing, 30, "alice's linphone to ring", interval=0.2)
    await alice.ok("answer")
    established = await bob.event("CALL_ESTABLISHED", mark, direction="outgoing")
    await alice.in_state("LinphoneCallStreamsRunning")
    await wait_until(lambda: dialog_record(cluster, established["id"]), 30, "the call's record in sip_bindings")
    await alice.ok("terminate")
    closed = await bob.event("CALL_CLOSED", mark, id=established["id"])
    assert "peer" in closed.get("param", ""), closed
    await record_gone(cluster, established["id"])

    # Every message alice sent went over her transport (ACKs, re-INVITEs, BYEs: the farm's
    # Record-Route names it).
    assert alice.transports() == {transport.upper()}, alice.log()
    # Quitting un-REGISTERs: the binding goes at once.
    assert await alice.quit() == 0

    async def unbound() -> bool:
        return await contacts(cluster, "alice") == []
    await wait_until(unbound, 30, "alice's binding to be removed")


def answer_shape(message: str) -> list[str]:
    """A response as the farm's choices make it: status line and header fields in order,
    with what differs per request (tags, nonces, Via, Call-ID, CSeq, Date) left out."""
    head = [line for line in message.splitlines() if line]
    shape = [head[0]]
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.lower() in ("via", "from", "to", "call-id", "cseq", "date"):
            shape.append(name)
        else:
            shape.append(re.sub(r'(nonce|opaque)="[^"]*"', r'\1=...', line))
    return shape


async def test_a_wrong_password_gets_the_same_answers_as_an_unknown_user(farm, cluster, linphones, tmp_path):
    """alice with a wrong password and ``mallory``, who is nobody, each register through the
    farm: both are refused (linphone gives up: LinphoneRegistrationFailed) with answers that
    do not tell them apart -- so the farm tells no scanner which accounts exist."""
    addresses, ca = farm
    wrong = await linphones(tmp_path / "wrong", "alice", "udp", proxy_uri(addresses[0], "udp"), ca, password="guess")
    nobody = await linphones(tmp_path / "nobody", "mallory", "udp", proxy_uri(addresses[1], "udp"), ca,
                             password="guess")
    for phone in (wrong, nobody):
        async def failed(phone=phone) -> bool:
            return await phone.registration() == "LinphoneRegistrationFailed"
        await wait_until(failed, 60, f"{phone.user}'s registration to fail", interval=0.2)
    answers = {}
    for phone in (wrong, nobody):
        got = [m for m in phone.received() if m.startswith("SIP/2.0 ") and "REGISTER" in m]
        assert len(got) >= 2, phone.log()
        answers[phone.user] = [answer_shape(m) for m in got]
    assert answers["alice"] == answers["mallory"], answers
    assert answers["alice"][-1][0] in ("SIP/2.0 401 Unauthorized", "SIP/2.0 403 Forbidden"), answers
    assert await contacts(cluster, "alice") == [] and await contacts(cluster, "mallory") == []


async def ring_and_answer(callee: Linphone) -> int:
    """Wait for the call to ring at ``callee`` (its daemon's event), answer it: its id there."""
    async def incoming() -> int | None:
        event = await callee.ok("pop-event")
        found = re.search(r"IncomingReceived", event) and re.search(r"Id: (\d+)", event)
        return int(found.group(1)) if found else None
    call = await wait_until(incoming, 30, f"{callee.user}'s linphone to ring", interval=0.1)
    await callee.ok(f"answer {call}")
    await callee.in_state("LinphoneCallStreamsRunning", call_id=call)
    return call


@pytest.mark.parametrize("alice_transport, bob_transport", [("tcp", "udp"), ("tls", "tcp")])
async def test_two_linphones_hold_and_resume_each_other_through_two_members(
        farm, cluster, linphones, tmp_path, alice_transport, bob_transport):
    """alice at member 1 calls bob at member 2 on another transport (two Record-Routes);
    each puts the other on hold and resumes (re-INVITEs both ways, the callee's through the
    caller's connection at member 1); alice hangs up."""
    addresses, ca = farm
    alice = await linphones(tmp_path / "alice", "alice", alice_transport, linphone_proxy(addresses[0], alice_transport), ca)
    bob = await linphones(tmp_path / "bob", "bob", bob_transport, linphone_proxy(addresses[1], bob_transport), ca)
    for phone in (alice, bob):
        await phone.registered()
    call = await alice.call(bob.aor)
    ids = {alice: call, bob: await ring_and_answer(bob)}
    await alice.in_state("LinphoneCallStreamsRunning", call_id=call)
    sip_id = sip_call_id(alice)
    await wait_until(lambda: dialog_record(cluster, sip_id), 30, "the call's record in sip_bindings")

    for holder, held in ((alice, bob), (bob, alice)):
        await holder.ok(f"call-pause {ids[holder]}")
        await holder.in_state("LinphoneCallPaused", call_id=ids[holder])
        await held.in_state("LinphoneCallPausedByRemote", call_id=ids[held])
        await holder.ok(f"call-resume {ids[holder]}")
        for phone in (holder, held):
            await phone.in_state("LinphoneCallStreamsRunning", call_id=ids[phone])

    # alice, the caller, hangs up (the callee's hang-up: the baresip test above).
    await alice.ok(f"terminate {call}")
    await call_gone(bob, ids[bob])
    await record_gone(cluster, sip_id)
    for phone in (alice, bob):
        assert phone.transports() == {phone.transport.upper()}, phone.log()
        assert await phone.quit() == 0

    async def unbound() -> bool:
        return all([await contacts(cluster, user) == [] for user in ("alice", "bob")])
    await wait_until(unbound, 30, "both bindings to be removed")


BALANCER = "127.0.0.8"       # haproxy's source address towards the members (proxy_protocol_from)


@pytest.fixture(params=["tcp", "tls"])
async def balanced_farm(cluster, tmp_path, request):
    """Two members behind a real haproxy in TCP mode (``send-proxy-v2``: the members see the
    phone's address): member 1 takes the connections, member 2 those made while member 1 is
    down (``backup``; health-checked every 0.3 s, and a refused connection is tried on the
    other at once, ``option redispatch``).  A phone given the balancer as its proxy has one
    address for the farm, as behind a cloud load balancer."""
    haproxy = need_tool("haproxy")
    addresses, ca = await start_farm(cluster, tmp_path, COLONY_SIP_ROUTE_ALIASES="localhost",
                                     COLONY_PROXY_PROTOCOL_FROM=f"{BALANCER}/32")
    (port,) = free_ports(1)
    config = tmp_path / "haproxy.cfg"
    transport = request.param
    listener = "sip_tls" if transport == "tls" else "sip"
    servers = "\n".join(
        f"    server m{n} {member[listener]} send-proxy-v2 source {BALANCER} check inter 300 fall 1 rise 1"
        f"{' backup' if n == 2 else ''}" for n, member in enumerate(addresses, 1))
    config.write_text(f"""
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch

frontend sip
    bind 127.0.0.1:{port}
    default_backend farm

backend farm
{servers}
""")
    log = tmp_path / "haproxy.log"
    proc = await asyncio.create_subprocess_exec(haproxy, "-f", str(config), "-db", stdout=log.open("wb"),
                                                stderr=asyncio.subprocess.STDOUT)

    async def up():
        assert proc.returncode is None, log.read_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True
    await wait_until(up, 30, "haproxy to listen")
    # By name for TLS: the phone checks the members' certificate (``linphone_proxy``).
    yield addresses, ca, transport, f"sip:{'localhost' if transport == 'tls' else '127.0.0.1'}:{port};transport={transport}"
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def test_a_linphone_on_a_connection_re_registers_through_the_other_member_when_its_member_is_sigkilled(
        balanced_farm, cluster, linphones, phones, tmp_path):
    """TCP and TLS through the balancer: the SIGKILL ends alice's connection (haproxy closes
    its side), linphone connects again at once -- to member 2 -- and registers; bob's call
    then reaches her there."""
    addresses, ca, transport, balancer = balanced_farm
    alice = await linphones(tmp_path / "alice", "alice", transport, balancer, ca)
    bob = await phones(tmp_path / "bob", "bob", "udp", [proxy_uri(addresses[1], "udp")], ca)
    await alice.registered()
    await bob.registered()
    [binding] = await contacts(cluster, "alice")
    assert binding["member"] == "sipfarm-1" and binding["transport"] == transport.upper(), binding

    async def bob_calls_alice() -> None:
        mark = len(bob.events)
        await bob.command("dial", alice.aor)
        call = await ring_and_answer(alice)
        established = await bob.event("CALL_ESTABLISHED", mark, direction="outgoing")
        # bob hangs up: alice's own BYE would follow the Record-Route, which names the member
        # (not the balancer: no sip_record_route_host here; test_record_route_port.py names one
        # with its own TLS port),
        # and linphone's mbedTLS cannot check a certificate for an IP address.
        await bob.command("hangup")
        await call_gone(alice, call)
        await bob.event("CALL_CLOSED", mark, id=established["id"])
    await bob_calls_alice()

    cluster.nodes["sipfarm-1"].signal(signal.SIGKILL)
    cluster.nodes["sipfarm-1"].process.wait(10)

    async def moved():
        return [b for b in await contacts(cluster, "alice") if b["member"] == "sipfarm-2"]
    [binding] = await wait_until(moved, 90, "alice's linphone to register again through member 2", interval=0.5)
    assert binding["transport"] == transport.upper(), binding
    # Its new connection gave it a new Contact (linphone writes the connection's port), under
    # the same +sip.instance: that replaced the binding on the dead member's flow (RFC 5626
    # §6), which had lived on for its hour, a fork of every call to alice.
    assert binding["instance"].startswith("<urn:uuid:"), binding
    assert [b["contact"] for b in await contacts(cluster, "alice")] == [binding["contact"]]
    await alice.registered()
    await bob_calls_alice()
    assert alice.transports() == {transport.upper()}, alice.log()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_linphone_keep_alives_and_refreshes_keep_its_one_binding(farm, cluster, linphones, tmp_path, transport):
    """linphone asks for 10 s (the farm's minimum here) and refreshes at 90 % of what the 200
    grants, on the same Call-ID and flow; it sends a keep-alive every second (UDP: a CRLF
    datagram; TCP and TLS: a CRLFCRLF ping, ``tcp_tls_keepalive``, answered by a CRLF pong,
    RFC 5626 §3.5.1).  Its one binding stays, refreshed in place; the farm drops nothing."""
    addresses, ca = farm
    alice = await linphones(tmp_path / "alice", "alice", transport, linphone_proxy(addresses[0], transport), ca,
                            expires=10, keepalive_ms=1000)
    await alice.registered()
    [first] = await contacts(cluster, "alice")

    async def refreshed_twice():
        found = await contacts(cluster, "alice")
        return found if len(found) == 1 and found[0]["cseq"] >= first["cseq"] + 2 else None
    [binding] = await wait_until(refreshed_twice, 60, "two refreshes of alice's binding", interval=0.5)
    assert (binding["call_id"], binding["contact"], binding["source"], binding["member"]) == (
        first["call_id"], first["contact"], first["source"], first["member"]), (first, binding)
    assert await alice.registration() == "LinphoneRegistrationOk"
    pings = alice.log(tail=None).count(f"keep alive sent to [{transport.upper()}://")
    assert pings >= 5, alice.log()
    if transport != "udp":
        # One connection all along: no REGISTER went out on another.
        assert "Trying to connect" not in alice.log(tail=None).partition("keep alive sent")[2], alice.log()
    for member in addresses:
        assert metric(member, "colony_sip_dropped_total") == 0


class Twinkle:
    """twinkle-console (Debian ``twinkle-console``), a third softphone, driven over its stdin
    (its own command line: ``call``, ``answer``, ``hold``, ``retrieve``, ``bye``, ``quit``)
    and read from its stdout.  No sound card: ALSA's ``null`` device for the speaker, the
    microphone and the ringer."""

    def __init__(self, home: Path, user: str, transport: str, proxy: str) -> None:
        self.home, self.user, self.transport, self.proxy = home, user, transport, proxy
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"

    async def start(self) -> Twinkle:
        config = self.home / ".twinkle"
        config.mkdir(parents=True, exist_ok=True)
        sip_port, rtp_port = free_ports(2)
        (config / f"{self.user}.cfg").write_text("\n".join([
            f"user_name={self.user}", f"user_domain={DOMAIN}", f"auth_realm={DOMAIN}", f"auth_name={self.user}",
            f"auth_pass={PASSWORDS[self.user]}", f"registrar={self.proxy}", "register_at_startup=yes",
            "use_outbound_proxy=yes", f"outbound_proxy={self.proxy}", "all_requests_to_proxy=yes",
            f"sip_transport={self.transport}", ""]))
        (config / "twinkle.sys").write_text("\n".join([
            "dev_ringtone=alsa:null", "dev_speaker=alsa:null", "dev_mic=alsa:null",
            f"sip_udp_port={sip_port}", f"rtp_port={rtp_port}", ""]))
        self.proc = await asyncio.create_subprocess_exec(
            need_tool("twinkle-console", "twinkle-console"), f"{self.user}.cfg", cwd=self.home,
            env={**os.environ, "HOME": str(self.home)}, stdin=asyncio.subprocess.PIPE,
            stdout=open(self.home / "out", "wb"), stderr=asyncio.subprocess.STDOUT)
        return self

    def send(self, command: str) -> int:
        """Type ``command``; what twinkle printed so far (to wait for what comes after)."""
        mark = len(self.out())
        self.proc.stdin.write(command.encode() + b"\n")
        return mark

    async def said(self, text: str, after: int = 0, timeout: float = 30) -> None:
        async def found() -> bool:
            assert self.proc.returncode is None or "quit" in self.out(), self.out()
            return text in self.out()[after:]
        try:
            await wait_until(found, timeout, f"twinkle ({self.user}) to say {text!r}", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.out()[-4000:]}\n{(self.home / '.twinkle' / 'twinkle.log').read_text(errors='replace')[-6000:]}") from None

    def out(self) -> str:
        path = self.home / "out"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_twinkle_calls_linphone_through_the_farm_holds_retrieves_hangs_up_and_unregisters(
        farm, cluster, linphones, tmp_path, transport):
    """A third phone: twinkle (member 1) calls linphone (member 2), puts the call on hold and
    takes it back (re-INVITEs: linphone sees PausedByRemote, then the streams again), hangs
    up; linphone calls twinkle, which answers, and linphone hangs up; twinkle un-REGISTERs."""
    addresses, ca = farm
    host, _, port = addresses[0]["sip"].rpartition(":")
    alice = Twinkle(tmp_path / "twinkle", "alice", transport, f"{host}:{port}")
    bob = await linphones(tmp_path / "bob", "bob", transport, linphone_proxy(addresses[1], transport), ca)
    try:
        await alice.start()
        await alice.said("registration succeeded")
        await bob.registered()
        [binding] = await contacts(cluster, "alice")
        assert binding["member"] == "sipfarm-1" and binding["transport"] == transport.upper(), binding

        mark = alice.send(f"call {bob.aor}")
        call = await ring_and_answer(bob)
        await alice.said("far end answered call", mark)
        mark = alice.send("hold")
        await alice.said("re-INVITE successful", mark)
        await bob.in_state("LinphoneCallPausedByRemote", call_id=call)
        mark = alice.send("retrieve")
        await alice.said("re-INVITE successful", mark)
        await bob.in_state("LinphoneCallStreamsRunning", call_id=call)
        mark = alice.send("bye")
        await alice.said("call ended", mark)
        await call_gone(bob, call)

        mark = len(alice.out())
        call = await bob.call(alice.aor)
        await alice.said("incoming call", mark)
        alice.send("answer")
        await bob.in_state("LinphoneCallStreamsRunning", call_id=call)
        mark = len(alice.out())
        await bob.ok(f"terminate {call}")
        await alice.said("far end ended call", mark)

        # ``deregister``, not ``quit``: twinkle 1.10.2 un-REGISTERs on quit after an outgoing
        # call only -- after a call it answered it dies of SIGSEGV on its way out, first.
        mark = alice.send("deregister")
        await alice.said("de-registration succeeded", mark)

        async def unbound() -> bool:
            return await contacts(cluster, "alice") == []
        await wait_until(unbound, 30, "twinkle's binding to be removed")
    finally:
        await alice.stop()
