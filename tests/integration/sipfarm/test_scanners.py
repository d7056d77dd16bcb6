"""What a stranger on the internet gets from the farm: real farm members on a real bus, a
phone registered with sipp, and SIPVicious (Debian's ``sipvicious``: ``svmap``, ``svwar``),
the scanner most SIP attacks start with, as the attacker."""

from __future__ import annotations

import asyncio
import re
import uuid


from cluster_harness import wait_until
from colony.protocols.sip.parser import parse_message
from tools import need_tool

from test_sipfarm import DOMAIN, free_udp_port, needs_sipp, register, serve_credentials, udp_exchange


class Phone(asyncio.DatagramProtocol):
    """A registered device that answers every request 200 OK, as a phone answers an OPTIONS
    or a MESSAGE, and keeps what reached it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        if data.startswith(b"SIP/2.0") or data.startswith(b"ACK"):
            return
        self.received.append(data)
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        keep = [line for line in head if re.match(rb"(?i)(via|from|to|call-id|cseq):", line)]
        keep = [line + b";tag=ph" if line.lower().startswith(b"to:") else line for line in keep]
        self.transport.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n", addr)


async def member(cluster, name: str, **env: str) -> tuple[str, int]:
    nc = await cluster.client()
    await serve_credentials(nc)
    cluster.start("sipfarm", name, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25", **env)
    view = await cluster.wait_state(name, "READY", timeout=60)
    host, _, port = view.addresses["sip"].rpartition(":")
    return host, int(port)


def stranger_request(method: str, to: str, sender: str = "alice", agent: str = "Linphone/5.0") -> bytes:
    return (f"{method} sip:{to}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{sender}@{DOMAIN}>;tag=x1\r\nTo: <sip:{to}@{DOMAIN}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\nUser-Agent: {agent}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello").encode()


@needs_sipp
async def test_a_stranger_reaches_no_registered_phone_and_learns_nothing(cluster):
    farm = await member(cluster, "sipfarm-1")
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    try:
        code, out = await register(farm, "alice", transport.get_extra_info("sockname")[1])
        assert code == 0, out
        for method in ("OPTIONS", "MESSAGE", "NOTIFY", "INFO"):
            # From names a subscriber, but nobody proved to be one: the same 407 for a
            # registered callee and for a user that does not exist, and the phone hears nothing.
            for callee in ("alice", "nobody"):
                answer = await udp_exchange(farm, stranger_request(method, callee))
                assert answer is not None, (method, callee)
                assert parse_message(answer).status == 407, (method, callee, answer[:80])
        assert phone.received == []
    finally:
        transport.close()


@needs_sipp
async def test_sipvicious_svwar_tells_no_extension_apart(cluster):
    svwar = need_tool("svwar", "sipvicious")
    # The scanner refusal switched off here, so svwar's questions are answered at all.
    farm = await member(cluster, "sipfarm-1", COLONY_SIP_REFUSED_USER_AGENTS="")
    code, out = await register(farm, "alice", free_udp_port())
    assert code == 0, out
    names = cluster.workdir / "extensions.txt"
    names.write_text("alice\nbob\nnobody\nadmin\n100\n")
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        report = await run(svwar, "--force", "-d", str(names), "--domain", DOMAIN, "-m", method,
                           "-P", str(free_udp_port()), farm[0], "-p", str(farm[1]))
        # svwar prints a table of the extensions it told apart from a made-up one; here it must
        # tell none apart (the same challenge for alice, who exists and is registered).
        assert "found nothing" in report and "| alice" not in report, (method, report[-2000:])


async def test_sipvicious_svmap_gets_no_answer_a_phone_does(cluster):
    svmap = need_tool("svmap", "sipvicious")
    farm = await member(cluster, "sipfarm-1")   # the default refusal of scanners' User-Agents
    ping = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{DOMAIN}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    answer = await wait_until(lambda: udp_exchange(farm, ping, timeout=2), 30, "an answer to a phone's OPTIONS")
    assert parse_message(answer).status == 200
    # svmap (User-Agent: friendly-scanner) finds no SIP server at all.
    report = await run(svmap, farm[0], "-p", str(farm[1]), "-P", str(free_udp_port()))
    assert "found nothing" in report and "Colony" not in report, report[-2000:]


async def run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    return output.decode(errors="replace")
