"""Softphone call flows through a real SIP farm member, with sipp as both phones.

Each flow is a scenario pair in ``scenarios/flow_*``: the callee (``*_uas.xml``) registers
through the farm (``register.xml``) and waits; the caller (``*_uac.xml``) authenticates on
the farm's 407 and runs the call.  A flow passes when both sipp processes finish their one
call (exit code 0) -- every message they expect came, through the farm, in order -- and the
member timed out no branch and dropped no packet meanwhile.

What a softphone does beyond REGISTER and a plain call (RFC 3261 §16 proxy rules): re-INVITE
and UPDATE both ways (the callee's requests along the Record-Route reversed), 100rel/PRACK in
the early dialog, INFO/MESSAGE/OPTIONS/REFER+NOTIFY in a dialog, the callee's BYE, CANCEL
while ringing and racing the 200, a 302 the caller follows, forks (busy + answer; both ring,
one answers, the other is cancelled; one declines 603, the other is cancelled), an INVITE
near the MTU over UDP and over TCP, a caller and a callee behind NAT (private Via and
Contact) each reached at its NAT, and a SUBSCRIBE dialog (RFC 6665) whose NOTIFYs and
un-SUBSCRIBE go through the farm.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import urllib.request
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
import pytest_asyncio

from cluster_harness import ClusterHarness
from colony.bus import names
from colony.contracts.auth import SipCredentialsReply, SipCredentialsRequest
from colony.natsd import EmbeddedNats
from colony.protocols.sip.digest import ha1
from colony.supervisor import die_with_parent

from test_sipfarm import free_udp_port

SCENARIOS = Path(__file__).parent / "scenarios"
DOMAIN = "acme.example"

SIPP = shutil.which("sipp")
if SIPP is None and os.environ.get("CI") == "true":
    raise RuntimeError("sipp (Debian sip-tester) is missing; CI installs it from .ci/apt-packages")
# One bus and one member for the module's flows (a member's start is most of a flow's time);
# each flow has callees of its own, so no flow rings another's phones.
pytestmark = [pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
              pytest.mark.asyncio(loop_scope="module")]


def password(user: str) -> str:
    return f"{user}-flows"


async def serve_credentials(nc) -> None:
    """The credentials contract as the admin API serves it: every user exists here."""

    async def answer(msg):
        req = SipCredentialsRequest.from_bytes(msg.data)
        user = req.user.partition("@")[0]
        if req.realm == DOMAIN:
            reply = SipCredentialsReply(ok=True, username=user, realm=req.realm, algorithm=req.algorithm,
                                        ha1=ha1(req.algorithm, user, req.realm, password(user)))
        else:
            reply = SipCredentialsReply.refused("unknown user")
        await msg.respond(reply.to_bytes())

    await nc.subscribe(names.AUTH_SIP_CREDENTIALS, queue=names.QUEUE_ADMIN, cb=answer)


class Member(NamedTuple):
    host: str
    port: int
    ops: str          # its metrics

    def counts(self) -> Counter[str]:
        """The member's counters that a healthy flow leaves alone: branches that never got an
        answer (Timer B/F, a transaction left hanging) and packets it dropped, by reason."""
        text = urllib.request.urlopen(f"http://{self.ops}/metrics", timeout=10).read().decode()
        found: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith(("colony_sip_proxy_timeouts_total", "colony_sip_dropped_total")):
                name, _, value = line.rpartition(" ")
                found[name] += int(float(value))
        return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def member(tmp_path_factory) -> Member:
    """A farm member on its own authenticated bus, as tests/conftest.py's ``cluster`` runs one."""
    root = tmp_path_factory.mktemp("flows")
    server = EmbeddedNats.authenticated(root / "nats", root / "bus", sync_always=False, preexec_fn=die_with_parent)
    server.start()
    cluster = ClusterHarness(nats_url=server.url, workdir=root, identities=server.identities)
    try:
        await cluster.ensure_schema()
        await serve_credentials(await cluster.client())
        cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
        view = await cluster.wait_state("sipfarm-1", "READY", timeout=60)
        host, _, port = view.addresses["sip"].rpartition(":")
        yield Member(host, int(port), view.addresses["ops"])
    finally:
        await cluster.close()
        server.stop()


def _sipp_args(scenario: str, *args: str, limit: float) -> list[str]:
    return [SIPP, "-sf", str(SCENARIOS / scenario), *args, "-m", "1", "-nostdin", "-timeout", f"{limit:g}s",
            "-timeout_error", "-trace_err", "-error_file", "/dev/stderr", "-trace_msg", "-message_file", "/dev/stderr"]


class Phone:
    """A callee: a sipp UAS on its own port, registered for ``user`` through the farm."""

    def __init__(self, scenario: str, user: str, transport: str = "u1", limit: float = 30) -> None:
        self.scenario, self.user, self.transport, self.limit = scenario, user, transport, limit
        self.port = free_udp_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, member: Member) -> "Phone":
        self.proc = await asyncio.create_subprocess_exec(
            *_sipp_args(self.scenario, "-i", "127.0.0.1", "-p", str(self.port), "-t", self.transport,
                        "-key", "domain", DOMAIN, limit=self.limit),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        code, out = await run(member, "register.xml", self.user, "-au", self.user, "-ap", password(self.user),
                              "-key", "contact_port", str(self.port), "-key", "expires", "300")
        assert code == 0, out
        return self

    async def finished(self) -> str:
        assert self.proc is not None
        out, _ = await asyncio.wait_for(self.proc.communicate(), self.limit + 10)
        text = out.decode(errors="replace")
        assert self.proc.returncode == 0, f"{self.scenario} exited {self.proc.returncode}:\n{text[-6000:]}"
        return text

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run(member: Member, scenario: str, service: str, *args: str, transport: str = "u1",
              limit: float = 30) -> tuple[int, str]:
    """One sipp call (or REGISTER) through ``member``: (exit code, its output's tail)."""
    host, port = member.host, member.port
    proc = await asyncio.create_subprocess_exec(
        *_sipp_args(scenario, f"{host}:{port}", "-s", service, "-i", "127.0.0.1", "-p", str(free_udp_port()),
                    "-t", transport, "-key", "domain", DOMAIN, *args, limit=limit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), limit + 10)
    return proc.returncode, out.decode(errors="replace")[-8000:]


async def flow(member: Member, uac: str, uas: str, callee: str, *args: str, **kw) -> str:
    """The caller alice runs ``uac`` against ``callee``, a phone running ``uas``; both must
    finish, and the member must have timed out no branch and dropped nothing meanwhile.
    Returns the phone's sipp output (its message trace)."""
    before = await asyncio.to_thread(member.counts)
    phone = await Phone(uas, callee).start(member)
    try:
        code, out = await run(member, uac, callee, "-au", "alice", "-ap", password("alice"),
                              "-key", "caller", "alice", *args, **kw)
        if code != 0:
            await phone.stop()
            phone_out = (await phone.proc.stdout.read()).decode(errors="replace")[-8000:]
            pytest.fail(f"{uac} exited {code}:\n{out}\n\n{uas}:\n{phone_out}")
        phone_out = await phone.finished()
    finally:
        await phone.stop()
    after = await asyncio.to_thread(member.counts)
    assert after == before, f"the member timed out or dropped: {after - before}"
    return phone_out


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_hold_and_resume_with_reinvite_and_update_both_ways(member, transport):
    await flow(member, "flow_reinvite_uac.xml", "flow_reinvite_uas.xml", f"bob-hold-{transport}", transport=transport)


async def test_a_caller_behind_nat_gets_the_callees_requests_at_its_nat(member):
    await flow(member, "flow_nat_reinvite_uac.xml", "flow_reinvite_uas.xml", "bob-nat")


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_reliable_183_and_prack_in_the_early_dialog_then_the_callee_hangs_up(member, transport):
    await flow(member, "flow_prack_uac.xml", "flow_prack_uas.xml", f"bob-prack-{transport}", transport=transport)


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_info_message_options_and_a_transfer_with_notify_inside_a_call(member, transport):
    await flow(member, "flow_midcall_uac.xml", "flow_midcall_uas.xml", f"bob-midcall-{transport}", transport=transport)


async def test_a_cancel_while_ringing_gets_the_caller_a_487(member):
    await flow(member, "flow_cancel_uac.xml", "flow_ringing_uas.xml", "bob-cancel")


async def test_a_cancel_racing_the_200_leaves_one_answered_call(member):
    await flow(member, "flow_cancel_race_uac.xml", "flow_cancel_race_uas.xml", "bob-race")


async def test_a_302_reaches_the_caller_who_calls_the_new_target(member):
    carol = await Phone("flow_answer_uas.xml", "carol").start(member)     # the 302 names carol
    try:
        await flow(member, "flow_redirect_uac.xml", "flow_redirect_uas.xml", "bob-moved")
        await carol.finished()
    finally:
        await carol.stop()


async def test_forked_call_one_device_busy_the_other_answers(member):
    busy = await Phone("flow_busy_uas.xml", "bob-fork-busy").start(member)
    try:
        await flow(member, "flow_big_sdp_uac.xml", "flow_answer_uas.xml", "bob-fork-busy")
        await busy.finished()
    finally:
        await busy.stop()


async def test_forked_call_both_ring_one_answers_the_other_is_cancelled(member):
    ringing = await Phone("flow_ringing_uas.xml", "bob-fork-ring").start(member)
    try:
        await flow(member, "flow_big_sdp_uac.xml", "flow_answer_late_uas.xml", "bob-fork-ring")
        await ringing.finished()
    finally:
        await ringing.stop()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_an_invite_near_the_mtu(member, transport):
    trace = await flow(member, "flow_big_sdp_uac.xml", "flow_answer_uas.xml", f"bob-big-{transport}",
                       transport=transport)
    # The INVITE as the phone got it, with the farm's Via and Record-Route: within 200 bytes of
    # the Ethernet MTU (RFC 3261 §18.1.1's mark, where a UA would move to TCP), still one datagram.
    # Over TCP the callee gets a second Record-Route, the farm on its own transport (the caller
    # is on UDP; RFC 5658 §3.1): larger, and no datagram.
    [size] = [int(m) for m in re.findall(r"message received \[(\d+)\] bytes :\s+INVITE ", trace)]
    assert 1300 <= size and (size <= 1472 or transport == "t1"), size


async def test_a_subscription_keeps_the_farm_on_its_path(member):
    await flow(member, "flow_subscribe_uac.xml", "flow_subscribe_uas.xml", "bob-blf")


async def test_forked_call_declined_on_one_device_stops_the_other_ringing(member):
    ringing = await Phone("flow_ringing_uas.xml", "bob-fork-decline").start(member)
    try:
        await flow(member, "flow_declined_uac.xml", "flow_decline_uas.xml", "bob-fork-decline", limit=10)
        await ringing.finished()
    finally:
        await ringing.stop()


class NattedPhone(asyncio.DatagramProtocol):
    """A phone behind NAT over UDP, as the farm sees one: its Via and Contact name a private
    address, its packets come from elsewhere (this socket).  It answers a call at once, and
    keeps every request that reaches it -- the ACK and the BYE must, at its NAT's address."""

    PRIVATE = "192.168.77.2:5060"

    def __init__(self, user: str) -> None:
        self.user = user
        self.requests: list = []
        self.responses: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        from colony.protocols.sip.parser import parse_message

        message = parse_message(data)
        if getattr(message, "status", None) is not None:
            self.responses.put_nowait(message)
            return
        self.requests.append(message)
        if message.method == "ACK":
            return
        head = [*(f"Via: {v}" for v in message.headers.get_all("Via")),
                f"From: {message.headers.get('From')}",
                f"To: {message.headers.get('To')}" + ("" if "tag=" in message.headers.get("To") else ";tag=natted"),
                f"Call-ID: {message.call_id}", f"CSeq: {message.headers.get('CSeq')}",
                *(f"Record-Route: {r}" for r in message.headers.get_all("Record-Route")),
                f"Contact: <sip:{self.user}@{self.PRIVATE}>"]
        self.transport.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(head) + "\r\nContent-Length: 0\r\n\r\n").encode(), addr)

    async def register(self, member: Member) -> None:
        from colony.protocols.sip.digest import h, parse_credentials

        def request(cseq: int, auth: str = "") -> bytes:
            return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {self.PRIVATE};rport;branch=z9hG4bKnat{cseq}\r\n"
                    f"From: <sip:{self.user}@{DOMAIN}>;tag=r1\r\nTo: <sip:{self.user}@{DOMAIN}>\r\n"
                    f"Call-ID: natted-{self.user}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{self.user}@{self.PRIVATE}>\r\n"
                    f"Expires: 300\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        self.transport.sendto(request(1), (member.host, member.port))
        challenge = await asyncio.wait_for(self.responses.get(), 10)
        assert challenge.status == 401
        params = parse_credentials(challenge.headers.get("WWW-Authenticate"))
        key = ha1("MD5", self.user, params["realm"], password(self.user))
        digest = h("MD5", f"{key}:{params['nonce']}:00000001:c0ffee:auth:{h('MD5', f'REGISTER:sip:{DOMAIN}')}")
        auth = (f'Authorization: Digest username="{self.user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="sip:{DOMAIN}", response="{digest}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
        self.transport.sendto(request(2, auth), (member.host, member.port))
        assert (await asyncio.wait_for(self.responses.get(), 10)).status == 200


async def test_a_callee_behind_nat_gets_the_ack_and_the_bye_at_its_nat(member):
    """Its 200's Contact is a private address: the caller's ACK and BYE, sent there through
    the farm's Record-Route, must reach the NAT instead (else it resends its 200 unanswered
    and drops the call, RFC 3261 §13.3.1.4)."""
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(lambda: NattedPhone("bob-natted"), local_addr=("127.0.0.1", 0))
    try:
        await phone.register(member)
        before = await asyncio.to_thread(member.counts)
        code, out = await run(member, "flow_big_sdp_uac.xml", "bob-natted", "-au", "alice", "-ap", password("alice"),
                              "-key", "caller", "alice")
        assert code == 0, out
        assert [r.method for r in phone.requests] == ["INVITE", "ACK", "BYE"]
        # ... sent to the private Contact (their Request-URI) by way of the flow the farm
        # recorded for the phone's NAT.
        assert ";fe=" in phone.requests[0].headers.get("Record-Route")
        assert all(str(r.uri).endswith(NattedPhone.PRIVATE) for r in phone.requests[1:])
        assert await asyncio.to_thread(member.counts) == before
    finally:
        transport.close()
