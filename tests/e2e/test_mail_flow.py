"""Inbound mail through `colony up` as a user runs it: provision with the CLI, send with swaks
and smtplib, find the message in the account's INBOX under the seed's SharedDomains layout
with its Return-Path, Received and Authentication-Results; and a mail store SIGKILLed in the
middle of a 2,000-message burst over several connections loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import email
import json
import os
import signal
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from test_colony_up import COLONY, free_base_port, ready_nodes, start_up, stop_up, wait_deliverable, wait_for
from tools import need_tool

from colony.storage.journal import Fenced
from colony.storage.mailbox import read_state

pytestmark = pytest.mark.slow


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def bodies(data_dir: Path, domain: str) -> list[Path]:
    # Not the ".tmp-" files of a body being written, or left by a killed store until the
    # account's next owner removes them.
    return sorted(p for p in (data_dir / "storage" / "SharedDomains" / domain).glob("**/*.macnt/mail/bodies/*")
                  if not p.name.startswith("."))


def inbox_bodies(data_dir: Path, domain: str) -> list[bytes]:
    """The messages in each account's INBOX of ``domain``, by the journal (read without claiming)."""
    found = []
    for mail_dir in (data_dir / "storage" / "SharedDomains" / domain).glob("**/*.macnt/mail"):
        boxes = {b.name: b for b in read_state(mail_dir).boxes.values()}
        found += [(mail_dir / "bodies" / m.body).read_bytes() for m in boxes["INBOX"].messages.values()] \
            if "INBOX" in boxes else []
    return found


@pytest.fixture
def cluster(tmp_path, dns_server):
    """`colony up` with 2 mail stores, its edges asking the loopback DNS server."""
    data_dir = tmp_path / "colony"
    base = free_base_port()
    # Inherited by every instance: the loopback DNS server, and no trusted network (the test's
    # clients are on loopback) with limits far above what the tests send.
    env = {"COLONY_DNS_SERVERS": dns_server.address, "COLONY_EDGE_ALLOW_NETWORKS": "",
           "COLONY_EDGE_MESSAGES_PER_MINUTE_PER_IP": "100000", "COLONY_EDGE_RECIPIENTS_PER_MINUTE_PER_IP": "100000",
           "COLONY_EDGE_CONNECTIONS_PER_MINUTE_PER_IP": "100000"}
    os.environ.update(env)
    try:
        proc = start_up(data_dir, base, "--mailstores", "2", "--sipfarms", "0")
    finally:
        for key in env:
            del os.environ[key]
    try:
        wait_for(lambda: ready_nodes(data_dir, 7), 180, "every instance READY")
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token")
        yield data_dir, base
    finally:
        stop_up(proc)


def smtp_port(data_dir: Path) -> int:
    nodes = json.loads(subprocess.run([COLONY, "status", "--json", "--data-dir", str(data_dir)],
                                      capture_output=True, text=True, timeout=60).stdout)
    edge = next(n for n in nodes if n["role"] == "edge")
    return int(edge["addresses"]["smtp"].rsplit(":", 1)[1])


def test_swaks_and_smtplib_deliver_into_the_seed_layout(cluster, dns_server):
    swaks = need_tool("swaks")
    data_dir, _ = cluster
    dns_server.add('remote.test. IN TXT "v=spf1 ip4:127.0.0.1 -all"',
                   'spoofed.test. IN TXT "v=spf1 ip4:192.0.2.1 -all"', '_dmarc.spoofed.test. IN TXT "v=DMARC1; p=quarantine"')
    colony(data_dir, "domain", "add", "acme.example")
    colony(data_dir, "account", "add", "alice@acme.example", "--password", "a long passphrase")
    port = smtp_port(data_dir)
    wait_deliverable(port, "alice@acme.example")

    out = subprocess.run([swaks, "--to", "alice@acme.example", "--from", "bob@remote.test", "--server",
                          f"127.0.0.1:{port}", "--header", "Subject: via swaks", "--helo", "mail.remote.test"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "250 2.0.0" in out.stdout, out.stdout + out.stderr
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "carol@remote.test", "Alice <ALICE@Acme.Example>", "via smtplib"
    msg.set_content("Hello from smtplib\n.\nA line with a lone dot above.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.send_message(msg)
    # From a domain whose DMARC policy says quarantine, sent from an address its SPF refuses:
    # accepted, and filed in the recipient's Junk folder.
    spoof = EmailMessage()
    spoof["From"], spoof["To"], spoof["Subject"] = "ceo@spoofed.test", "alice@acme.example", "urgent transfer"
    spoof.set_content("Please pay.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.send_message(spoof)

    found = wait_for(lambda: (b := bodies(data_dir, "acme.example")) and len(b) == 3 and b, 60, "three messages stored")
    # The seed's layout: SharedDomains/<domain>/<account>.macnt/ (no foldering by default).
    assert all(p.relative_to(data_dir / "storage" / "SharedDomains").parts[:2] == ("acme.example", "alice.macnt")
               for p in found)
    messages = {m["Subject"]: m for m in (email.message_from_bytes(p.read_bytes()) for p in found)}
    assert "dmarc=fail" in messages["urgent transfer"]["Authentication-Results"]
    # The journal as the next owner would read it.  A body file is written before its journal
    # record is committed, so wait for the records rather than read them once.
    def boxes():
        state = read_state(found[0].parent.parent)
        by_box = {b.name: list(b.messages) for b in state.boxes.values()}
        return by_box if sum(len(m) for m in by_box.values()) == 3 else None
    by_box = wait_for(boxes, 60, "the three messages in the account's journal")
    assert len(by_box["INBOX"]) == 2 and len(by_box["Junk"]) == 1
    swaked = messages["via swaks"]
    assert swaked["Return-Path"] == "<bob@remote.test>"
    assert "by " in swaked["Received"] and "for <alice@acme.example>" in swaked["Received"]
    assert "spf=pass" in swaked["Authentication-Results"]
    plain = messages["via smtplib"]
    assert plain["Return-Path"] == "<carol@remote.test>"
    assert "\n.\nA line with a lone dot above." in plain.get_payload().replace("\r\n", "\n")   # dot-stuffing undone


def test_sigkill_a_mail_store_mid_burst_loses_and_duplicates_nothing(cluster):
    data_dir, _ = cluster
    colony(data_dir, "domain", "add", "burst.example")
    accounts = [f"u{i}@burst.example" for i in range(8)]
    for address in accounts:
        colony(data_dir, "account", "add", address)
    port = smtp_port(data_dir)
    for address in accounts:
        wait_deliverable(port, address)
    nodes = json.loads(subprocess.run([COLONY, "status", "--json", "--data-dir", str(data_dir)],
                                      capture_output=True, text=True, timeout=60).stdout)
    victim = next(n for n in nodes if n["id"] == "mailstore-1")["pid"]

    total, connections = 2000, 8
    accepted: set[str] = set()

    async def sender(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line

        async def cmd(data: bytes) -> bytes:
            writer.write(data)
            await writer.drain()
            return await reply()

        await reply()
        await cmd(b"EHLO burst.test\r\n")
        for n in range(k, total, connections):
            msgid = f"<burst-{n}@remote.test>"
            rcpt = accounts[n % len(accounts)]
            assert (await cmd(b"MAIL FROM:<x@remote.test>\r\n")).startswith(b"250")
            assert (await cmd(f"RCPT TO:<{rcpt}>\r\n".encode())).startswith(b"250")
            assert (await cmd(b"DATA\r\n")).startswith(b"354")
            answer = await cmd(f"Message-ID: {msgid}\r\nSubject: {n}\r\n\r\nbody {n}\r\n.\r\n".encode())
            if answer.startswith(b"250"):
                accepted.add(msgid)
            if n == total // 3:
                os.kill(victim, signal.SIGKILL)           # in the middle of the burst
        await cmd(b"QUIT\r\n")
        writer.close()

    async def burst() -> None:
        await asyncio.gather(*(sender(k) for k in range(connections)))

    asyncio.run(burst())
    assert len(accepted) >= total * 0.99   # the edge answers 250 throughout: mail stores are behind the bus

    def stored_ids() -> list[str] | None:
        # What the accounts' INBOXes hold, as their next owner would read them: a body file
        # alone is not a stored message (an owner fenced off mid-batch leaves the files of its
        # failed commit until the account's owner closes or the next one takes over).
        try:
            ids = [email.message_from_bytes(body)["Message-ID"] for body in inbox_bodies(data_dir, "burst.example")]
        except (OSError, ValueError, Fenced):   # an owner taking over removed what we read: again
            return None
        return ids if len(ids) >= len(accepted) else None
    ids = wait_for(stored_ids, 300, "every accepted message stored")
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert set(ids) == accepted
    # The killed mail store came back (colony up restarts it) and the cluster is whole again.
    wait_for(lambda: ready_nodes(data_dir, 7), 120, "mailstore-1 back and READY")
