"""A mail store that takes a MAIL job for a domain moving away from its region (an edge whose
directory had not seen ``routing`` yet) stores nothing and sends it on to the move's target
region's MAIL with the body inline, and the stream keeps it (its message id is not the edge's,
which the duplicate window still holds); a domain not moving is stored as before.  The same
after the move is ``done``: mail accepted in another region before its edge saw the move can
be sourced into the old region's MAIL after the source's copy was removed, and stored there it
would be lost (issue #11: two messages lost in the e2e move)."""

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


# the domain's directory entry as the store reads it when the job arrives: still moving, or
# moved (the move kept as history, home_region the target's)
PHASES = {
    "routing": {"move": {"move_id": "m1", "source": "local", "target": "us", "phase": "routing"}},
    "flipped": {"home_region": "us", "move": {"move_id": "m1", "source": "local", "target": "us", "phase": "flipped"}},
    "done": {"home_region": "us", "move": {"move_id": "m1", "source": "local", "target": "us", "phase": "done"}},
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_mail_for_a_domain_moving_away_is_sent_on_to_the_target_region(world, phase):
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1", COLONY_REGIONS="local,us")
    await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    before = await world.publish([BOB])
    await wait_until(lambda: _async(world.stored_ids(BOB).get(before) == 1), 60, "mail stored before the move")

    await world.directory.put(names.directory_key(names.AGG_DOMAIN, DOMAIN), orjson.dumps(
        {"kind": "domain", "name": DOMAIN, "storage": {"account_foldering": "none", "domain_foldering": False,
                                                        "fast_storage_index": None},
         **PHASES[phase]}))
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
    # the id names the job sent on (this region's MAIL sequence): a copy bounced back later is another job
    assert msg.headers["Nats-Msg-Id"].startswith(mail.sent_on_msg_id("us") + "/local.")
    assert world.stored_ids(BOB).get(mid) is None          # not stored in the source region
    # and kept by this region's MAIL for the target to source: the edge's publish of the same
    # mail is still in the stream's duplicate window, so a publish under its Nats-Msg-Id would
    # be acknowledged as a duplicate and dropped
    kept = await world.nc.jetstream().get_last_msg(names.STREAM_MAIL, msg.subject)
    assert InboundMail.from_bytes(kept.data).message_id == mid

    # The same mail back as another job, as a target store that had not seen the move yet
    # sends it back: sent on again, not taken for a duplicate of its first sending on (lost).
    first = msg.headers["Nats-Msg-Id"]
    await world.nc.jetstream().publish(names.mail_subject("local", DOMAIN, names.mail_partition(BOB)), mail.encode(),
                                       headers={"Nats-Msg-Id": mail.sent_on_msg_id("local", "us.1")}, timeout=10)

    async def sent_on_again():
        last = await world.nc.jetstream().get_last_msg(names.STREAM_MAIL, msg.subject)
        return last.headers["Nats-Msg-Id"] != first and InboundMail.from_bytes(last.data).message_id == mid
    await wait_until(sent_on_again, 30, "the bounced mail sent on again")
    assert world.stored_ids(BOB).get(mid) is None


async def _async(value):
    return value

