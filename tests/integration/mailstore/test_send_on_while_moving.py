"""A mail store that takes a MAIL job for a domain moving away from its region (an edge whose
directory had not seen ``routing`` yet) stores nothing and sends it on to the move's target
region's MAIL, body inline and message id kept; a domain not moving is stored as before."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)

from colony.bus import names  # noqa: E402
from colony.contracts.mail import InboundMail  # noqa: E402

BOB = f"bob@{DOMAIN}"
pytestmark = pytest.mark.slow


async def test_mail_for_a_domain_moving_away_is_sent_on_to_the_target_region(world):
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1")
    await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    before = await world.publish([BOB])
    await wait_until(lambda: _async(world.stored_ids(BOB).get(before) == 1), 60, "mail stored before the move")

    await world.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(
        {"kind": "domain", "name": DOMAIN, "storage": {"account_foldering": "none", "domain_foldering": False,
                                                        "fast_storage_index": None},
         "move": {"move_id": "m1", "source": "local", "target": "us", "phase": "routing"}}))
    # what reaches the target's subject (the stream that captures it acked the store's publish)
    seen = []

    async def keep(msg):
        seen.append(msg)
    sub = await world.nc.subscribe(names.mail_region_filter("us"), cb=keep)

    async def sent_on():
        # the store's directory cache may hold the old entry for a moment: keep publishing
        # new mail until one is sent on
        mid = await world.publish([BOB])
        try:
            await wait_until(lambda: _async(any(InboundMail.from_bytes(m.data).message_id == mid for m in seen)),
                             5, "mail sent on")
        except AssertionError:
            return None
        return mid, next(m for m in seen if InboundMail.from_bytes(m.data).message_id == mid)

    mid, msg = await wait_until(sent_on, 60, "mail for the moving domain sent on to us")
    await sub.unsubscribe()
    assert msg.subject == names.mail_subject("us", DOMAIN, names.mail_partition(BOB))
    mail = InboundMail.from_bytes(msg.data)
    assert mail.message_id == mid and mail.body is not None and b"Subject: test" in mail.body
    assert msg.headers["Nats-Msg-Id"] == mail.msg_id()
    assert world.stored_ids(BOB).get(mid) is None          # not stored in the source region


async def _async(value):
    return value

