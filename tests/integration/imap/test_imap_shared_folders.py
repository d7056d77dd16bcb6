"""Shared folders across two mail store processes on a real nats-server: alice's account is
owned by one store, bob's by the other; alice shares a folder with bob, and bob's IMAP session
(imapclient, on his own store) lists, opens, reads, flags and appends to it through the
forwarding to alice's store, within the rights alice grants, until she revokes them; what bob
reads is read for him only (\\Seen per user, with his own MODSEQ)."""

from __future__ import annotations

import asyncio
import imaplib
import sys
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mailstore"))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)

from colony.bus import names  # noqa: E402
from colony.contracts.auth import AuthCheckReply, AuthCheckRequest, AuthFailure  # noqa: E402

pytestmark = pytest.mark.slow

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
PASSWORD = "s3cret"
SHARED = f"Other Users/{ALICE}/Projects"


async def _auth_responder(nc):
    async def answer(msg):
        req = AuthCheckRequest.from_bytes(msg.data)
        if req.user.lower() in (ALICE, BOB) and req.password == PASSWORD:
            reply = AuthCheckReply.granted(req.user.lower(), DOMAIN, {})
        else:
            reply = AuthCheckReply.refused(AuthFailure.INVALID)
        await msg.respond(reply.to_bytes())
    return await nc.subscribe(names.AUTH_CHECK, cb=answer)


@pytest.fixture
async def two_stores(world):
    await world.domain()
    await world.account(ALICE)
    await world.account(BOB)
    sub = await _auth_responder(world.nc)
    addresses = {}
    for node in ("mailstore-1", "mailstore-2"):
        world.start(node, COLONY_IMAP_DIRECT_LOGIN="true", COLONY_OUTBOUND_SMTP_PORT="25")
    for node in ("mailstore-1", "mailstore-2"):
        view = await world.cluster.wait_state(node, "READY", timeout=60)
        host, _, port = view.addresses["imap-direct"].rpartition(":")
        addresses[node] = (host, int(port))
    yield world, addresses
    await sub.unsubscribe()


def _login(address: tuple[str, int], user: str) -> IMAPClient:
    client = IMAPClient(address[0], address[1], ssl=False, timeout=60)
    client.login(user, PASSWORD)
    return client


def _until(what: str, probe, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _flags(client: IMAPClient, uid: int) -> set[bytes]:
    return set(client.fetch([uid], ["FLAGS"])[uid][b"FLAGS"])


def _scenario(addresses) -> dict:
    out: dict = {}
    # A login on a store's direct listener takes the vacant account there: alice on one
    # store, bob on the other.
    alice = _login(addresses["mailstore-1"], ALICE)
    bob = _login(addresses["mailstore-2"], BOB)
    try:
        out["caps"] = bob.capabilities()
        alice.create_folder("Projects")
        for i in range(2):
            alice.append("Projects", f"From: carol@{DOMAIN}\r\nSubject: plan {i}\r\n\r\nstep {i}\r\n".encode())
        alice.create_folder("Private")
        out["namespace"] = bob.namespace()
        out["before_grant"] = [f[2] for f in bob.list_folders()]
        with pytest.raises(IMAPClientError) as refused:
            bob.select_folder(SHARED)
        out["select_before"] = str(refused.value)

        alice.setacl("Projects", BOB, "lr")
        out["listed"] = _until("the shared folder in bob's LIST",
                               lambda: [f for f in bob.list_folders() if f[2].startswith("Other Users")])
        with pytest.raises(imaplib.IMAP4.readonly):        # SELECT with lr answers [READ-ONLY]
            bob.select_folder(SHARED)
        selected = bob.select_folder(SHARED, readonly=True)
        out["lr_select"] = (selected[b"EXISTS"], b"READ-ONLY" in selected)
        uids = bob.search("ALL")
        out["uids"] = uids
        out["read"] = bob.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
        with pytest.raises(IMAPClientError) as refused:
            bob.add_flags(uids[:1], [b"\\Flagged"])
        out["store_lr"] = str(refused.value)

        alice.setacl("Projects", BOB, "lrswi")
        selected = bob.select_folder(SHARED)
        out["lrswi_read_only"] = b"READ-ONLY" in selected
        bob.add_flags(uids[:1], [b"\\Flagged", b"\\Seen"])
        alice.select_folder("Projects")
        out["alice_sees_flags"] = _flags(alice, uids[0])
        out["bob_sees_flags"] = _flags(bob, uids[0])
        # \Seen is each user's own (RFC 4314 §4): bob reading message 2 marks it read for him
        # only, with a MODSEQ of his that alice's HIGHESTMODSEQ does not show.
        modseqs = [c.folder_status(name, [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
                   for c, name in ((alice, "Projects"), (bob, SHARED))]
        bob.fetch(uids[1:2], ["BODY[]"])
        out["seen_2"] = (_flags(alice, uids[1]), _flags(bob, uids[1]))
        out["alice_modseq"] = (modseqs[0], alice.folder_status("Projects", [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"])
        out["bob_changed"] = sorted(bob.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseqs[1]}"]))
        out["alice_changed"] = sorted(alice.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseqs[0]}"]))
        with pytest.raises(IMAPClientError) as refused:
            bob.add_flags(uids[:1], [b"\\Deleted"])                 # no t
        out["store_deleted"] = str(refused.value)
        bob.append(SHARED, b"From: bob\r\nSubject: from bob\r\n\r\nhello\r\n")
        out["alice_exists"] = alice.noop() and len(alice.search("ALL"))
        bob.copy(uids[:1], "INBOX")                     # out of alice's folder into bob's INBOX
        bob.select_folder("INBOX")
        out["bob_inbox"] = [m[b"BODY[HEADER.FIELDS (SUBJECT)]"] for m in
                            bob.fetch(bob.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).values()]

        bob.select_folder(SHARED)
        bob.idle()                       # alice's store writes; bob's store looks again while he idles
        started = time.monotonic()
        alice.append("Projects", b"From: alice\r\nSubject: while bob idles\r\n\r\nnews\r\n")
        heard = []
        while time.monotonic() - started < 30 and not any(r[1] == b"EXISTS" for r in heard):
            heard += bob.idle_check(timeout=2)
        out["idle_heard"] = [r for r in heard if r[1] == b"EXISTS"]
        bob.idle_done()
        alice.setacl("Projects", BOB, "lrswite")                 # now bob may delete and expunge
        bob.select_folder(SHARED)
        mine = bob.search(["SUBJECT", "from bob"])
        bob.add_flags(mine, [b"\\Deleted"])
        out["expunged"] = bob.expunge()
        alice.noop()
        out["alice_after_expunge"] = len(alice.search("ALL"))
        assert alice._imap.deleteacl("Projects", BOB)[0] == "OK"     # imapclient has no DELETEACL
        with pytest.raises(IMAPClientError) as refused:
            bob.fetch(uids[:1], ["FLAGS"])
        out["after_revoke"] = str(refused.value)
        # The selected folder is gone for bob: his session ends as for a deleted mailbox.
        with pytest.raises((IMAPClientError, imaplib.IMAP4.abort, OSError)):
            bob.noop()
        bob = _login(addresses["mailstore-2"], BOB)
        out["listed_after"] = _until("the folder gone from bob's LIST", lambda: (
            not [f for f in bob.list_folders() if f[2].startswith("Other Users")]) and "gone")
    finally:
        for c in (alice, bob):
            try:
                c.logout()
            except Exception:
                pass
    return out


async def test_share_a_folder_with_a_colleague_on_another_store(two_stores):
    world, addresses = two_stores
    r = await asyncio.to_thread(_scenario, addresses)
    assert await world.owner(ALICE) == "mailstore-1" and await world.owner(BOB) == "mailstore-2"
    assert b"ACL" in r["caps"] and b"RIGHTS=TEXK" in [c.upper() for c in r["caps"]]
    personal, others, _shared = r["namespace"]
    assert others[0][0] == "Other Users/"
    assert not any(name.startswith("Other Users") for name in r["before_grant"])
    assert "NONEXISTENT" in r["select_before"]
    # Projects only, never Private; the namespace's levels are \Noselect parents
    assert [f[2] for f in r["listed"]] == ["Other Users", f"Other Users/{ALICE}", SHARED]
    assert all(b"\\Noselect" in f[0] for f in r["listed"][:2]) and b"\\Noselect" not in r["listed"][2][0]
    assert r["lr_select"][0] == 2 and r["lr_select"][1] is True     # lr: read-only
    assert r["lrswi_read_only"] is False
    assert b"Subject: plan" in r["read"]
    assert "READ-ONLY" in r["store_lr"]
    assert b"\\Flagged" in r["alice_sees_flags"]                     # written in alice's mailbox ...
    assert b"\\Seen" not in r["alice_sees_flags"]                    # ... but bob's \Seen is his own
    assert {b"\\Flagged", b"\\Seen"} <= r["bob_sees_flags"]
    assert b"\\Seen" not in r["seen_2"][0] and b"\\Seen" in r["seen_2"][1]
    assert r["alice_modseq"][0] == r["alice_modseq"][1]               # nothing changed for alice
    assert r["bob_changed"] == [r["uids"][1]] and r["alice_changed"] == []
    assert "NOPERM" in r["store_deleted"]
    assert r["alice_exists"] == 3
    assert any(b"plan" in s for s in r["bob_inbox"])
    assert r["idle_heard"] and r["idle_heard"][0][0] == 4           # 2 + bob's APPEND + alice's
    assert r["alice_after_expunge"] == 3                             # bob's own message expunged
    assert "NONEXISTENT" in r["after_revoke"]
