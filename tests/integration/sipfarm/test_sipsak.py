"""The SIP farm with sipsak (Debian ``sipsak``) as another independent client: its OPTIONS
ping, its registrar test (REGISTER with digest auth), a MESSAGE to a registered phone that
answers the farm's 407 with the sender's credentials, and its flood mode (bounded) -- against
real farm members on a real bus, the credentials contract answered here as the admin API
would (as in ``test_sipfarm.py``).  Skipped without sipsak, a failure in CI."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.contracts.auth import SipCredentialsReply, SipCredentialsRequest
from colony.protocols.sip.digest import ha1
from tools import need_tool

from test_scanners import Phone
from test_sipfarm import SCENARIOS, bindings, free_udp_port, needs_sipp, sipp

# sipsak resolves the domain of every URI it is given, an outbound proxy or not: the
# accounts live in a domain that resolves everywhere.
DOMAIN = "localhost"
PASSWORDS = {"alice": "alice-sak-secret", "bob": "bob-sak-secret"}


@pytest.fixture(autouse=True)
def _sipsak() -> str:
    """Skipped (a failure in CI) before a farm is started for nothing."""
    return need_tool("sipsak")


@pytest.fixture
async def farm(cluster):
    nc = await cluster.client()

    async def answer(msg):
        req = SipCredentialsRequest.from_bytes(msg.data)
        user = req.user.partition("@")[0]
        if user in PASSWORDS and req.realm == DOMAIN:
            reply = SipCredentialsReply(ok=True, username=user, realm=req.realm, algorithm=req.algorithm,
                                        ha1=ha1(req.algorithm, user, req.realm, PASSWORDS[user]))
        else:
            reply = SipCredentialsReply.refused("unknown user")
        await msg.respond(reply.to_bytes())

    await nc.subscribe(names.AUTH_SIP_CREDENTIALS, queue=names.QUEUE_ADMIN, cb=answer)
    for n in (1, 2):
        cluster.start("sipfarm", f"sipfarm-{n}", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    members = []
    for n in (1, 2):
        view = await cluster.wait_state(f"sipfarm-{n}", "READY", timeout=60)
        host, _, port = view.addresses["sip"].rpartition(":")
        members.append((host, int(port)))
    yield members


async def sipsak(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run sipsak; its exit code is 0 when what it tested succeeded (1: an unexpected or
    failure reply, 2: no reply, 3: an error of its own)."""
    proc = await asyncio.create_subprocess_exec(need_tool("sipsak"), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(errors="replace")[-4000:]


def via(member: tuple[str, int]) -> list[str]:
    """sipsak's options for talking to ``member``: its address as the outbound proxy, ours
    in the headers sipsak writes, and a local port of its own."""
    host, port = member
    return ["-p", host, "-r", str(port), "-H", "127.0.0.1", "-l", str(free_udp_port())]


async def test_sipsak_options_ping_is_answered_200(farm):
    for member in farm:
        code, out = await sipsak("-vv", "-s", f"sip:{member[0]}:{member[1]}", "-H", "127.0.0.1", "-l", str(free_udp_port()))
        assert code == 0, out
        assert "SIP/2.0 200 OK" in out and "Allow: INVITE" in out, out


async def test_sipsak_registers_with_digest_auth(farm, cluster):
    # usrloc mode: REGISTER, the farm's 401, the REGISTER again with credentials, 200.
    code, out = await sipsak("-vvv", "-U", "-s", f"sip:alice@{DOMAIN}", "-u", "alice", "-a", PASSWORDS["alice"],
                             "-x", "300", *via(farm[0]))
    assert code == 0, out
    assert "SIP/2.0 401 Unauthorized" in out and "All usrloc tests completed successful" in out, out
    [binding] = await bindings(cluster, "alice", DOMAIN)
    assert binding["contact"].startswith("sip:alice@127.0.0.1:")
    # A wrong password is the same 401 again, and sipsak says so.
    code, out = await sipsak("-vv", "-U", "-s", f"sip:alice@{DOMAIN}", "-u", "alice", "-a", "not-the-password",
                             "-x", "300", *via(farm[1]))
    assert code != 0 and "All usrloc tests completed successful" not in out, out


async def registered_phone(member: tuple[str, int], protocol):
    """A UDP phone (``protocol``'s) registered as alice through ``member`` with sipp: (transport, phone)."""
    transport, phone = await asyncio.get_running_loop().create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0))
    host, port = member
    code, out = await sipp(f"{host}:{port}", "-sf", str(SCENARIOS / "register.xml"), "-s", "alice",
                           "-au", "alice", "-ap", PASSWORDS["alice"], "-key", "domain", DOMAIN,
                           "-key", "contact_port", str(transport.get_extra_info("sockname")[1]),
                           "-key", "expires", "300", "-i", "127.0.0.1", "-p", str(free_udp_port()))
    if code != 0:
        transport.close()
    assert code == 0, out
    return transport, phone


@needs_sipp
async def test_sipsak_sends_a_message_to_a_registered_phone_answering_the_farms_407(farm, cluster):
    # The phone (answers 200 to what reaches it) registers with sipp; sipsak sends bob's MESSAGE
    # to alice through the other member, answering the farm's 407 with bob's password.
    # (sipsak 0.9.8.1's own -M and -I modes crash before sending anything, upstream issue
    # #95: the MESSAGE is a file it sends, its "shoot" mode.)
    transport, phone = await registered_phone(farm[0], Phone)
    try:
        message = cluster.workdir / "message.sip"
        message.write_bytes((f"MESSAGE sip:alice@{DOMAIN} SIP/2.0\r\nFrom: <sip:bob@{DOMAIN}>;tag=b1\r\n"
                             f"To: <sip:alice@{DOMAIN}>\r\nCall-ID: {uuid.uuid4().hex}@127.0.0.1\r\nCSeq: 1 MESSAGE\r\n"
                             f"Content-Type: text/plain\r\nContent-Length: 17\r\n\r\nhello from sipsak").encode())
        code, out = await sipsak("-vvv", "-f", str(message), "-s", f"sip:alice@{DOMAIN}", "-u", "bob",
                                 "-a", PASSWORDS["bob"], *via(farm[1]))
        assert code == 0, out
        assert "SIP/2.0 407 Proxy Authentication Required" in out and "SIP/2.0 200 OK" in out, out
        [received] = [m for m in phone.received if m.startswith(b"MESSAGE ")]
        assert received.endswith(b"hello from sipsak") and b"Proxy-Authorization" not in received
    finally:
        transport.close()


class SlowPhone(Phone):
    """A phone whose user's app takes ``delay`` seconds to answer (a phone waking up on a
    mobile network): the sender over UDP sends its request again meanwhile (RFC 3261 Timer E)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def datagram_received(self, data, addr) -> None:
        asyncio.get_running_loop().call_later(self.delay, super().datagram_received, data, addr)


@needs_sipp
async def test_a_message_sent_again_while_a_slow_phone_answers_reaches_it_once(farm, cluster):
    # sipsak sends its MESSAGE again every T1 until an answer comes.  Its copies must not be
    # taken for new requests: checked again they carried a replayed nonce count, the farm
    # answered 407, sipsak sent the MESSAGE once more with new credentials (a new CSeq), and
    # the phone showed its user the message twice.
    transport, phone = await registered_phone(farm[0], lambda: SlowPhone(2.5))
    try:
        sent = set()
        for n, member in enumerate(farm):   # the Call-ID's owner, or not: either member takes sipsak's packets
            message = cluster.workdir / f"slow-message-{n}.sip"
            call_id = f"{uuid.uuid4().hex}@127.0.0.1"
            sent.add(call_id.encode())
            message.write_bytes((f"MESSAGE sip:alice@{DOMAIN} SIP/2.0\r\nFrom: <sip:bob@{DOMAIN}>;tag=b1\r\n"
                                 f"To: <sip:alice@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n"
                                 f"Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nslow phone?").encode())
            code, out = await sipsak("-vvv", "-f", str(message), "-s", f"sip:alice@{DOMAIN}", "-u", "bob",
                                     "-a", PASSWORDS["bob"], *via(member))
            assert code == 0, out
            assert out.count("SIP/2.0 407 Proxy Authentication Required") == 1 and "SIP/2.0 200 OK" in out, out
        # Copies the member's own client transaction sends downstream have the same CSeq (the
        # phone's transaction absorbs them): what its user sees is one message per Call-ID and CSeq.
        seen = {(re.search(rb"(?im)^Call-ID:\s*(\S+)", m).group(1), re.search(rb"(?im)^CSeq:\s*(\d+)", m).group(1))
                for m in phone.received if m.startswith(b"MESSAGE ")}
        assert {call_id for call_id, _ in seen} == sent and len(seen) == len(sent), seen
    finally:
        transport.close()


def summed(views: list[dict], method: str, label: str, value: str, name: str) -> float:
    """A counter of every member, the series of ``method`` with ``label``=``value``."""
    import urllib.request

    total = 0.0
    for addresses in views:
        text = urllib.request.urlopen(f"http://{addresses['ops']}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith(name + "{") and f'method="{method}"' in line and f'{label}="{value}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def test_sipsak_flood_of_a_strangers_requests_to_a_phone_reaches_it_never(farm, cluster):
    # Flood mode, bounded: 300 requests to a registered user as fast as sipsak sends them.
    # sipsak 0.9.8.1 floods OPTIONS only (a file given is ignored) -- to a user, the farm
    # forwards an OPTIONS to the phone like a MESSAGE, only for a caller who authenticates:
    # every one is challenged, none reaches the phone, and the farm still answers after.
    code, out = await sipsak("-U", "-s", f"sip:alice@{DOMAIN}", "-u", "alice", "-a", PASSWORDS["alice"], "-x", "300",
                             *via(farm[0]))
    assert code == 0, out
    view = await cluster.view()
    views = [view[f"sipfarm-{n}"].addresses for n in (1, 2)]
    before = await asyncio.to_thread(summed, views, "OPTIONS", "code", "407", "colony_sip_answers_total")
    code, out = await sipsak("-F", "-e", "300", "-s", f"sip:alice@{DOMAIN}", *via(farm[1]), timeout=120)
    assert code == 0, out

    async def challenged() -> bool:
        after = await asyncio.to_thread(summed, views, "OPTIONS", "code", "407", "colony_sip_answers_total")
        return after - before >= 300 * 0.9     # UDP on a loaded machine: a few may be lost
    await wait_until(challenged, 30, "the flood's requests to be challenged", interval=0.5)
    assert await asyncio.to_thread(summed, views, "OPTIONS", "kind", "request", "colony_sip_forwarded_total") == 0
    code, out = await sipsak("-s", f"sip:{farm[1][0]}:{farm[1][1]}", "-H", "127.0.0.1", "-l", str(free_udp_port()))
    assert code == 0, out
