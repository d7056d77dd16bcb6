"""RFC 4475, the SIP torture test messages, sent as a grader sends them: every message of §3
(rfc4475_messages.py), byte for byte, to real farm members over UDP and -- where its point is
the same or is the stream's framing -- over TCP, with the outcome the RFC asks of a server.

What "handled" means for a valid request here: it is parsed and answered as the farm answers
anyone -- the RFC's requests name users and domains the farm does not serve, so a digest
challenge (401/407), a refused relay (403) or a 404 are the farm's proper answers.  An invalid
request gets the 4xx/5xx the RFC names (or a drop where the RFC says so); a response is never
answered.  After each message an OPTIONS shows the member still serves.

Where the answers go: most of the RFC's Vias name UDP hosts without rport, so the farm answers
at the packet's source address and the Via's port (5060 unless it says otherwise, RFC 3261
§18.2.2).  Each message is sent from that port on an address of its own in 127/8, where the
answer comes back -- the bytes stay the RFC's.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from dataclasses import dataclass, field

import pytest

from colony.protocols.sip.message import SipResponse
from colony.protocols.sip.parser import SipParseError, StreamFramer, parse_message
from rfc4475_messages import MESSAGES, Torture
from test_sipfarm import DOMAIN, Udp, serve_credentials

pytestmark = pytest.mark.slow

DROP = frozenset()      # nothing comes back (a response, or a request that cannot be answered)

# The RFC's outcome for each message, as statuses the farm may answer with.
EXPECTED: dict[str, frozenset[int]] = {
    # §3.1.1: valid, parsed and handled.  Requests from users of domains the farm does not serve
    # get its challenge; one with a Route to another host is not relayed (403); a request to a
    # host with no user is not for anyone here (404).
    "wsinv": frozenset({403}),         # its Route names services.example.com
    "intmeth": frozenset({407}),
    "esc01": frozenset({407}),
    "escnull": frozenset({401}),
    "esc02": frozenset({404}),         # an unknown method (not REGISTER) to a host: not ours
    "lwsdisp": frozenset({407}),
    "longreq": frozenset({407}),
    "dblreq": frozenset({401}),        # the REGISTER only; the INVITE after it is noise (§18.3)
    "semiuri": frozenset({407}),
    "transports": frozenset({407}),
    # Its Route names 127.0.0.1:5080: another host's (403), or -- for a farm on 127.0.0.1, as in
    # this test -- a first Route naming the farm's own host, removed as preloaded (§16.4).
    "mpart01": frozenset({403, 407}),
    "unreason": DROP,                  # responses to no transaction of ours
    "noreason": DROP,
    # §3.1.2: invalid.
    "badinv01": frozenset({400}),
    "clerr": frozenset({400}),
    "ncl": frozenset({400}),
    "scalar02": frozenset({400}),      # "should respond with a 400 Bad Request due to the CSeq error"
    "scalarlg": DROP,                  # a response: "will simply discard it"
    "quotbal": frozenset({400}),
    "ltgtruri": frozenset({400}),
    "lwsruri": frozenset({400}),
    "lwsstart": frozenset({400}),      # rejecting is acceptable (being liberal is too)
    "trws": frozenset({400}),          # likewise
    "escruri": frozenset({400}),
    "baddate": frozenset({407}),       # liberal: the Date header is not needed here
    "regbadct": frozenset({400}),
    "badaspec": frozenset({407}),      # liberal: the spaces inside <> are ignored
    "baddn": frozenset({400}),
    "badvers": frozenset({505}),
    "mismatch01": frozenset({400}),
    "mismatch02": frozenset({400, 501}),
    "bigcode": DROP,
    # §3.2
    "badbranch": frozenset({400, 407}),   # reject, or fall back to RFC 2543 matching
    # §3.3
    # "Ideally, it will respond with a 400": a response repeats From, To and Call-ID (RFC 3261
    # §8.2.6.2), so one to this would be as malformed as the request; the parser must not
    # break, and does not.  Dropped, as nksip and the other stacks that answer it cannot do better.
    "insuf": DROP,
    "unkscm": frozenset({416}),
    "novelsc": frozenset({416}),
    "unksm2": frozenset({400}),        # a registrar: the To is no SIP or SIPS URI, so no AOR
    "bext01": frozenset({420}),        # the proxy's Proxy-Require check comes first (§16.3)
    "invut": frozenset({407}),         # a proxy handles it as any INVITE
    "regaut01": frozenset({401}),      # a new challenge in a scheme the registrar knows
    "multi01": frozenset({400}),
    "mcl01": frozenset({400}),
    "bcast": DROP,
    "zeromf": frozenset({483}),
    "cparam01": frozenset({401}),
    "cparam02": frozenset({401}),
    "regescrt": frozenset({401}),
    "sdp01": frozenset({407}),         # a proxy handles it as any INVITE
    # §3.4
    "inv2543": frozenset({407}),
}

# Over TCP too (as a transaction of its own: another_transaction), unless its point is a
# datagram's (the bytes after the message, a body with no Content-Length).  clerr, ncl and mcl01 are the stream's own cases: see STREAM.
UDP_ONLY = {"dblreq", "inv2543"}
# How a stream ends (RFC 4475 §3.1.2.2, §3.1.2.3, §3.3.9): "closed" after the answer (if any).
STREAM = {
    "clerr": (DROP, "closed"),             # "wait for more data ... and close the connection"
    "ncl": (frozenset({400}), "closed"),
    "mcl01": (frozenset({400}), "closed"),  # "the framing error is not recoverable"
}
ANSWER_PORT = {"quotbal": 5050}           # its Via's port; every other Via names 5060 or none


def test_the_corpus_is_the_rfcs():
    assert len(MESSAGES) == 49 and set(EXPECTED) == {m.name for m in MESSAGES}
    mpart = next(m for m in MESSAGES if m.name == "mpart01")
    assert len(mpart.data.partition(b"\r\n\r\n")[2]) == 553      # its Content-Length


@pytest.fixture
async def members(cluster):
    nc = await cluster.client()
    await serve_credentials(nc)
    found = []
    for n in (1, 2):
        cluster.start("sipfarm", f"sipfarm-{n}", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    for n in (1, 2):
        view = await cluster.wait_state(f"sipfarm-{n}", "READY", timeout=60)
        host, _, port = view.addresses["sip"].rpartition(":")
        found.append((host, int(port)))
    yield found


def options_probe(via: str) -> tuple[bytes, str]:
    call_id = f"probe-{uuid.uuid4().hex}"
    return (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: {via};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), call_id


def read_answer(data: bytes) -> SipResponse:
    try:
        answer = parse_message(data)
    except SipParseError:
        # The 400 to scalar02 repeats its CSeq, whose number is out of range (RFC 4475
        # §3.1.2.4); read with that number put right, the rest must be good SIP.
        answer = parse_message(re.sub(rb"(?m)^CSeq: \d{11,} ", b"CSeq: 0 ", data, count=1))
    assert isinstance(answer, SipResponse), data[:200]
    return answer


@dataclass
class Outcome:
    statuses: set[int] = field(default_factory=set)
    answers: list[SipResponse] = field(default_factory=list)
    probe: int | None = None          # the status of the OPTIONS sent after it
    closed: bool = False


async def bind_answer_address(port: int):
    """A UDP endpoint at ``port`` on an address of 127/8 no other test uses."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            return await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        except OSError:
            continue
    pytest.fail(f"no address of 127/8 with UDP port {port} free")


async def over_udp(member, message: Torture, expect: frozenset[int]) -> Outcome:
    sock, inbox = await bind_answer_address(ANSWER_PORT.get(message.name, 5060))
    host, port = sock.get_extra_info("sockname")
    probe, probe_id = options_probe(f"SIP/2.0/UDP {host}:{port}")
    outcome = Outcome()
    try:
        sock.sendto(message.data, member)
        sock.sendto(probe, member)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        grace = None
        while True:
            # Until the probe is answered and -- when an answer is due -- the message's too;
            # then a moment for anything more (a second answer, an answer to a response).
            done = outcome.probe is not None and (not expect or outcome.statuses)
            if done and grace is None:
                grace = loop.time() + 0.5
            until = grace if grace is not None else deadline
            try:
                data = await asyncio.wait_for(inbox.queue.get(), max(0.0, until - loop.time()))
            except TimeoutError:
                return outcome
            answer = read_answer(data)
            if answer.call_id == probe_id:
                outcome.probe = answer.status
            else:
                outcome.statuses.add(answer.status)
                outcome.answers.append(answer)
    finally:
        sock.close()


_CALL_ID = re.compile(rb"(?im)^((?:call-id|i)[ \t]*:[ \t]*)(\S+)")


def another_transaction(data: bytes) -> bytes:
    """The message as a transaction of its own: the same bytes but for a suffix to its Call-ID
    (the RFC's messages share branches; the farm tells requests apart by Call-ID too).  Sent
    unchanged over TCP it would be the UDP copy's retransmission, whose answer goes where the
    first copy's went."""
    return _CALL_ID.sub(lambda m: m.group(1) + m.group(2) + b".tcp", data)


async def over_tcp(member, message: Torture, expect: frozenset[int], ends: str | None) -> Outcome:
    reader, writer = await asyncio.open_connection(*member)
    host, port = writer.get_extra_info("sockname")[:2]
    framer = StreamFramer()
    outcome = Outcome()

    async def next_answer(timeout: float) -> SipResponse | None:
        while (data := framer.next_message()) is None:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                return None
            if not chunk:
                outcome.closed = True
                return None
            framer.feed(chunk)
        return read_answer(data)

    try:
        writer.write(another_transaction(message.data))
        if ends == "closed":
            # The answer (if any), then the end of the stream: the member's own deadline for
            # a message that never completes is well inside this one.
            while not outcome.closed:
                answer = await next_answer(60)
                if answer is None and not outcome.closed:
                    return outcome       # neither closed nor answered within a minute
                if answer is not None:
                    outcome.statuses.add(answer.status)
                    outcome.answers.append(answer)
            return outcome
        probe, probe_id = options_probe(f"SIP/2.0/TCP {host}:{port}")
        writer.write(probe)
        while outcome.probe is None:
            answer = await next_answer(15)
            if answer is None:
                return outcome      # the probe was not answered: reported below
            if answer.call_id == probe_id:
                outcome.probe = answer.status
            else:
                outcome.statuses.add(answer.status)
                outcome.answers.append(answer)
        if expect and not outcome.statuses:    # relayed to its Call-ID's owner: may come later
            answer = await next_answer(15)
            if answer is not None:
                outcome.statuses.add(answer.status)
                outcome.answers.append(answer)
        return outcome
    finally:
        writer.close()


async def still_serves(member) -> bool:
    loop = asyncio.get_running_loop()
    sock, inbox = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    try:
        probe, _ = options_probe(f"SIP/2.0/UDP 127.0.0.1:{sock.get_extra_info('sockname')[1]}")
        sock.sendto(probe, member)
        return parse_message(await asyncio.wait_for(inbox.queue.get(), 15)).status == 200
    finally:
        sock.close()


async def test_every_rfc4475_message_gets_the_rfcs_outcome_from_the_farm(members, cluster):
    deviations = []
    for i, message in enumerate(MESSAGES):
        member = members[i % 2]          # both members, and so both sides of a relay
        expect = EXPECTED[message.name]
        runs = [("UDP", expect, None)]
        if message.name in STREAM:
            runs.append(("TCP", *STREAM[message.name]))
        elif message.name not in UDP_ONLY:
            runs.append(("TCP", expect, None))
        for transport, wanted, ends in runs:
            if transport == "UDP":
                outcome = await over_udp(member, message, wanted)
            else:
                outcome = await over_tcp(member, message, wanted, ends)
            got = f"{sorted(outcome.statuses) or 'nothing'}"
            problems = []
            if outcome.statuses != set(wanted) and not (wanted and len(outcome.statuses) == 1
                                                        and outcome.statuses <= wanted):
                problems.append(f"answered {got}, the RFC: {sorted(wanted) or 'nothing'}")
            if ends is None and outcome.probe != 200:
                problems.append(f"the OPTIONS after it got {outcome.probe}")
            if ends == "closed" and not outcome.closed:
                problems.append("the connection stayed open")
            print(f"§{message.section:9} {message.name:10} {transport}: {got} probe={outcome.probe} closed={outcome.closed}")
            if problems:
                deviations.append(f"§{message.section} {message.name} over {transport}: {'; '.join(problems)}")
            if message.name == "dblreq":
                # §3.1.1.8: the REGISTER is answered, the INVITE after it is never seen.
                assert {a.cseq().method for a in outcome.answers} <= {"REGISTER"}, outcome.answers
            if message.name == "bext01" and 420 in outcome.statuses:
                # §3.3.5: the proxy names the Proxy-Require option tags it does not support.
                [answer] = {a.status: a for a in outcome.answers}.values()
                assert answer.headers.get_all("Unsupported") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
        assert await still_serves(member), f"{message.name}: the member stopped answering"
    for n in (1, 2):
        node = cluster.nodes[f"sipfarm-{n}"]
        assert node.process.poll() is None, f"sipfarm-{n} died"
        assert "Traceback" not in node.log(), node.log()[-3000:]
    assert not deviations, "\n".join(deviations)


# --- a valid request for a registered user is forwarded ---------------------------------------
# With credentials for the RFC's users (any user, one password) and a phone registered as
# sip:user@example.com, the RFC's valid requests for that user are challenged and, answered
# as a phone answers a challenge (the same request, the next CSeq, Proxy-Authorization), put on
# the phone's wire with what the RFC says a proxy keeps: unknown header fields and parameters
# as they came, Max-Forwards one less, a Via of its own on top.
TORTURE_PASSWORD = "torture-passphrase"
FORWARDED = ["lwsdisp", "longreq", "transports", "baddate", "badbranch", "invut", "sdp01", "inv2543"]


async def serve_any_user(nc) -> None:
    from colony.bus import names
    from colony.contracts.auth import SipCredentialsReply, SipCredentialsRequest
    from colony.protocols.sip.digest import ha1

    async def answer(msg):
        req = SipCredentialsRequest.from_bytes(msg.data)
        user = req.user.partition("@")[0]
        reply = SipCredentialsReply(ok=True, username=user, realm=req.realm, algorithm=req.algorithm,
                                    ha1=ha1(req.algorithm, user, req.realm, TORTURE_PASSWORD))
        await msg.respond(reply.to_bytes())

    await nc.subscribe(names.AUTH_SIP_CREDENTIALS, queue=names.QUEUE_ADMIN, cb=answer)


@pytest.fixture
async def open_members(cluster):
    await serve_any_user(await cluster.client())
    found = []
    for n in (1, 2):
        cluster.start("sipfarm", f"sipfarm-{n}", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    for n in (1, 2):
        view = await cluster.wait_state(f"sipfarm-{n}", "READY", timeout=60)
        host, _, port = view.addresses["sip"].rpartition(":")
        found.append((host, int(port)))
    yield found


def authorized(data: bytes, challenge: SipResponse, header: str) -> bytes:
    """``data`` resent as its sender answers ``challenge``: the next CSeq, with credentials."""
    from colony.protocols.sip.digest import h, ha1, parse_credentials

    request = parse_message(data)
    name = "WWW-Authenticate" if header == "Authorization" else "Proxy-Authenticate"
    params = parse_credentials(challenge.headers.get(name))
    user = request.address("From" if header == "Proxy-Authorization" else "To").uri.user
    algorithm = params.get("algorithm", "MD5")
    uri = data.split(b" ", 2)[1].decode()
    key = ha1(algorithm, user, params["realm"], TORTURE_PASSWORD)
    response = h(algorithm, f"{key}:{params['nonce']}:00000001:c0ffee:auth:{h(algorithm, f'{request.method}:{uri}')}")
    credentials = (f'{header}: Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                   f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, '
                   f'cnonce="c0ffee"\r\n').encode()
    cseq = request.cseq().number
    data = re.sub(rb"(?im)^(cseq[ \t]*:[ \t]*)" + str(cseq).encode(), lambda m: m.group(1) + str(cseq + 1).encode(),
                  data, count=1)
    start, _, rest = data.partition(b"\r\n")
    return start + b"\r\n" + credentials + rest


async def test_valid_rfc4475_requests_for_a_registered_user_are_forwarded(open_members):
    loop = asyncio.get_running_loop()
    phone, phone_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    phone_port = phone.get_extra_info("sockname")[1]
    try:
        def register(user: str, cseq: int, auth: bytes = b"") -> bytes:
            return (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{phone_port};rport;"
                    f"branch=z9hG4bK{uuid.uuid4().hex}\r\nFrom: <sip:{user}@example.com>;tag=r1\r\n"
                    f"To: <sip:{user}@example.com>\r\nCall-ID: torture-{user}\r\nCSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sip:{user}@127.0.0.1:{phone_port}>\r\nExpires: 600\r\nMax-Forwards: 70\r\n"
                    ).encode() + auth + b"Content-Length: 0\r\n\r\n"
        for user in ("user", "userb"):       # inv2543 calls UserB (accounts are lower case)
            phone.sendto(register(user, 1), open_members[0])
            challenge = read_answer(await asyncio.wait_for(phone_in.queue.get(), 15))
            assert challenge.status == 401
            phone.sendto(authorized(register(user, 2), challenge, "Authorization"), open_members[0])
            assert read_answer(await asyncio.wait_for(phone_in.queue.get(), 15)).status == 200

        for i, name in enumerate(FORWARDED):
            message = next(m for m in MESSAGES if m.name == name)
            member = open_members[i % 2]
            sock, inbox = await bind_answer_address(ANSWER_PORT.get(name, 5060))
            try:
                sock.sendto(message.data, member)
                challenge = read_answer(await asyncio.wait_for(inbox.queue.get(), 15))
                assert challenge.status == 407, (name, challenge.status)
                sock.sendto(authorized(message.data, challenge, "Proxy-Authorization"), member)
                while True:     # the INVITEs' 100 Trying come to the caller; the request to the phone
                    try:
                        got = parse_message(await asyncio.wait_for(phone_in.queue.get(), 15))
                    except TimeoutError:
                        answers = [read_answer(inbox.queue.get_nowait()) for _ in range(inbox.queue.qsize())]
                        pytest.fail(f"{name} never reached the phone; its sender got "
                                    f"{[(a.status, a.reason) for a in answers]}")
                    if got.call_id == parse_message(message.data).call_id:
                        break
            finally:
                sock.close()
            sent = parse_message(message.data)
            assert got.method == sent.method and str(got.uri) == f"sip:{sent.uri.user.lower()}@127.0.0.1:{phone_port}", name
            # Decremented, or (an RFC 2543 request without one) added as 70: §16.6 step 3.
            hops = sent.headers.get("Max-Forwards")
            assert got.headers.get("Max-Forwards") == (str(int(hops) - 1) if hops else "70"), name
            assert got.top_via().branch.startswith("z9hG4bK-cf") and len(got.vias()) == len(sent.vias()) + 1, name
            assert "Proxy-Authorization" not in got.headers, name
            for header, value in sent.headers:    # every other field as it came (§16.6)
                if header not in ("Via", "Max-Forwards", "CSeq", "Record-Route", "Content-Length"):
                    assert value in got.headers.get_all(header), (name, header, value)
            assert got.body == sent.body, name
            if got.method == "INVITE":    # the phone declines: the call ends (the farm ACKs it)
                decline = (b"SIP/2.0 486 Busy Here\r\n" + b"".join(f"Via: {v}\r\n".encode() for v in got.headers.get_all("Via"))
                           + b"".join(f"{n}: {got.headers.get(n)}\r\n".encode() for n in ("From", "Call-ID", "CSeq"))
                           + f"To: {got.headers.get('To')};tag=busy\r\nContent-Length: 0\r\n\r\n".encode())
                phone.sendto(decline, member)
    finally:
        phone.close()
