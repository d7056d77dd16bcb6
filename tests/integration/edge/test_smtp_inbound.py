"""Real SMTP clients deliver to an edge process; the MAIL stream holds exactly what was accepted."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
from email.message import EmailMessage

import pytest

from cluster_harness import wait_until
from colony import events
from colony.bus import names
from colony.contracts.mail import InboundMail
from tools import need_tool


def _message(to: str, body: str = "Hello Bob\n", subject: str = "hi") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@remote.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def _decode(msg) -> InboundMail:
    mail = events.decode(msg.data)
    assert isinstance(mail, InboundMail)
    return mail


async def test_smtplib_with_starttls_delivers_one_stream_message(edge):
    with edge.smtp() as client:
        client.ehlo()
        assert client.has_extn("starttls") and client.has_extn("pipelining") and client.has_extn("chunking")
        client.starttls(context=edge.tls_context())
        client.ehlo()
        refused = client.send_message(_message("bob@example.com"), "alice@remote.test", ["Bob@Example.com"])
        assert refused == {}
    msgs = await wait_until(edge.stream_messages, 30, "the message in MAIL")
    assert len(msgs) == 1
    raw = msgs[0]
    # in the partition of its (first) final mailbox, which that mailbox's owner fetches
    assert raw.subject == names.mail_subject("local", "example.com", names.mail_partition("bob@example.com"))
    assert raw.subject == f"colony.mail.local.example_2ecom.{names.mail_partition('bob@example.com')}"
    assert raw.headers["Nats-Msg-Id"].endswith("/example_2ecom")
    mail = _decode(raw)
    assert mail.mail_from == "alice@remote.test" and mail.edge_node == "edge-1"
    assert [r.mailbox for r in mail.recipients] == ["bob@example.com"]
    assert mail.recipients[0].original == "Bob@Example.com"
    assert mail.tls in ("TLSv1.2", "TLSv1.3")
    body = mail.body
    assert body.startswith(b"Return-Path: <alice@remote.test>\r\nReceived: from client.test ([127.0.0.1])")
    head = body.split(b"\r\n\r\n")[0].decode().replace("\r\n\t", " ")  # unfolded
    assert f"id {mail.message_id}" in head and "ESMTPS" in head and "for <Bob@Example.com>" in head
    assert b"Subject: hi" in body and b"Hello Bob" in body and mail.size == len(body)


async def test_unknown_recipient_550_511_and_other_refusals(edge):
    with edge.smtp() as client:
        client.ehlo()
        client.mail("alice@remote.test")
        assert client.rcpt("nobody@example.com")[0] == 550
        code, text = client.rcpt("nobody@example.com")
        assert (code, text.split()[0]) == (550, b"5.1.1")
        assert client.rcpt("someone@not-hosted.test")[:1] == (550,)
        assert client.rcpt("x@suspended.test")[0] == 450
        code, _ = client.rcpt("carol@example-mail.com")   # domain alias
        assert code == 250
    assert await edge.stream_messages() == []


async def test_ten_recipients_in_three_domains_are_three_stream_messages(edge):
    rcpts = ["bob@example.com", "carol@example.com", "dave@example.com", "erin@example.com",
             "frank@example.org", "grace@example.org", "heidi@example.org",
             "ivan@example.net", "judy@example.net", "team@example.com"]   # team: bob + frank again
    with edge.smtp() as client:
        client.ehlo()
        assert client.send_message(_message(", ".join(rcpts)), "alice@remote.test", rcpts) == {}
    msgs = await wait_until(lambda: _at_least(edge, 3), 30, "three stream messages")
    mails = [_decode(m) for m in msgs]
    assert len(mails) == 3 and len({m.message_id for m in mails}) == 1
    by_domain = {m.domain: sorted(r.mailbox for r in m.recipients) for m in mails}
    assert by_domain == {
        "example.com": ["bob@example.com", "carol@example.com", "dave@example.com", "erin@example.com"],
        "example.org": ["frank@example.org", "grace@example.org", "heidi@example.org"],
        "example.net": ["ivan@example.net", "judy@example.net"],
    }
    assert len({m.body for m in mails}) == 1


async def _at_least(edge, n):
    msgs = await edge.stream_messages()
    return msgs if len(msgs) >= n else None


async def test_class_of_service_size_limit(edge):
    with edge.smtp() as client:
        client.ehlo()
        client.mail("alice@remote.test", ["SIZE=200000"])
        code, text = client.rcpt("ivan@example.net")   # class "small": 100 kB
        assert (code, text.split()[0]) == (552, b"5.3.4")
        client.rset()
        client.mail("alice@remote.test")
        assert client.rcpt("ivan@example.net")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(b"x" * 900 + b"\r\n")
        for _ in range(150):
            client.send((b"y" * 998 + b"\r\n"))
        client.send(b".\r\n")
        code, text = client.getreply()
        assert (code, text.split()[0]) == (552, b"5.3.4")
    assert await edge.stream_messages() == []


async def test_swaks_delivers_with_pipelining_and_chunking(edge):
    swaks = need_tool("swaks")
    for extra in ([], ["--pipeline"], ["--tls", "--tls-verify", "--tls-ca-path", str(edge.ca)]):
        proc = await asyncio.to_thread(subprocess.run, [
            swaks, "--server", edge.host, "--port", str(edge.port), "--helo", "swaks.test",
            "--from", "alice@remote.test", "--to", "dave@example.com", "--body", "via swaks",
            "--header", "Subject: swaks", *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "250 2.0.0 OK queued as" in proc.stdout
    mails = [_decode(m) for m in await wait_until(lambda: _at_least(edge, 3), 30, "three messages")]
    assert all(m.recipients[0].mailbox == "dave@example.com" and b"via swaks" in m.body for m in mails)
    assert [m.tls is not None for m in mails] == [False, False, True]


def _raw_session(edge, payload: bytes) -> bytes:
    with socket.create_connection((edge.host, edge.port), timeout=30) as sock:
        f = sock.makefile("rb")
        f.readline()
        out = b""

        def command(line: bytes) -> bytes:
            sock.sendall(line)
            reply = b""
            while True:
                got = f.readline()
                reply += got
                if not got or got[3:4] == b" ":
                    return reply
        for line in (b"EHLO smuggler.test\r\n", b"MAIL FROM:<alice@remote.test>\r\n", b"RCPT TO:<bob@example.com>\r\n",
                     b"DATA\r\n"):
            assert command(line)[:1] in (b"2", b"3")
        sock.sendall(payload)
        try:
            while True:
                got = f.readline()
                if not got:
                    break
                out += got
                if got.startswith((b"221", b"421", b"554")):
                    break
        except OSError:
            pass
        return out


SMUGGLED = (b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n"
            b"From: admin@bank.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\n.\r\n", b"\r\n.\n"])
async def test_smuggling_never_makes_a_second_message(edge, fake_end):
    payload = b"Subject: first\r\n\r\nfirst" + fake_end + SMUGGLED + b".\r\nQUIT\r\n"
    out = await asyncio.to_thread(_raw_session, edge, payload)
    assert b"554 5.5.2" in out
    await asyncio.sleep(0)  # the edge answered; anything it published was acknowledged before
    msgs = await edge.stream_messages()
    assert msgs == [], [_decode(m).recipients for m in msgs]


async def test_fifty_megabytes_through_the_object_store_with_bounded_edge_memory(edge):
    def peak_rss_kb() -> int:
        for line in open(f"/proc/{edge.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    before = peak_rss_kb()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"   # 74 octets
    count = 50 * 1024 * 1024 // len(line) + 1
    digest = hashlib.sha256()

    def send() -> tuple[int, bytes]:
        with edge.smtp(timeout=300) as client:
            client.ehlo()
            client.mail("alice@remote.test", [f"SIZE={count * len(line) + 100}"])
            assert client.rcpt("erin@example.com")[0] == 250
            client.putcmd("data")
            assert client.getreply()[0] == 354
            head = b"Subject: big\r\n\r\n"
            client.send(head)
            digest.update(head)
            block = line * 1000
            sent = 0
            while sent < count:
                n = min(1000, count - sent)
                chunk = block if n == 1000 else line * n
                client.send(chunk)
                digest.update(chunk)
                sent += n
            client.send(b".\r\n")
            return client.getreply()

    code, text = await asyncio.to_thread(send)
    assert code == 250, text
    grown_mb = (peak_rss_kb() - before) / 1024
    print(f"edge peak RSS grew by {grown_mb:.1f} MB for a 50 MB message")
    assert grown_mb < 40, f"the edge's peak RSS grew by {grown_mb:.0f} MB for a 50 MB message"
    mail = _decode((await wait_until(edge.stream_messages, 30, "the big message"))[0])
    assert mail.body is None and mail.body_ref is not None and mail.size > 50 * 1024 * 1024
    js = (await edge.harness.client()).jetstream()
    store = await js.object_store(mail.body_ref.bucket)
    result = await store.get(mail.body_ref.name)
    stored = result.data
    assert len(stored) == mail.size == mail.body_ref.size
    assert hashlib.sha256(stored).hexdigest() == mail.body_ref.sha256
    assert stored.startswith(b"Return-Path: <alice@remote.test>\r\n")
    assert hashlib.sha256(stored[stored.index(b"Subject: big"):]).hexdigest() == digest.hexdigest()


async def test_concurrent_sessions_each_message_once(edge):
    def send_all(n: int) -> int:
        with edge.smtp() as client:
            client.ehlo()
            for i in range(5):
                assert client.sendmail("alice@remote.test", ["carol@example.com"],
                                       f"From: alice@remote.test\r\nSubject: {n}-{i}\r\n\r\nbody {n}-{i}\r\n".encode()) == {}
        return 5

    sent = sum(await asyncio.gather(*(asyncio.to_thread(send_all, n) for n in range(10))))
    msgs = await wait_until(lambda: _at_least(edge, sent), 60, f"{sent} stream messages")
    mails = [_decode(m) for m in msgs]
    assert len(mails) == sent and len({m.message_id for m in mails}) == sent
    assert sorted(m.body.split(b"body ")[1].strip().decode() for m in mails) == sorted(
        f"{n}-{i}" for n in range(10) for i in range(5))
