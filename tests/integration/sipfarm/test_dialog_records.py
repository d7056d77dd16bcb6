"""A call's metering record on the real bus: it is forgotten when no BYE ever comes."""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError
from prometheus_client import CollectorRegistry

from cluster_harness import wait_until
from colony.bus import names
from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm.bindings import BindingStore
from colony_sipfarm.farm import SipFarm, _hash

OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKx\r\n"
      b"From: <sip:alice@acme.example>;tag=a\r\nTo: <sip:bob@acme.example>;tag=b\r\n"
      b"Call-ID: lost-bye-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


async def test_a_call_record_whose_bye_never_comes_expires(cluster):
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    usage = []

    def publish(event):
        usage.append(event)

    farm = SipFarm(Settings(sip_dialog_record_ttl=3), "sipfarm-1", store=BindingStore(kv, clock=lambda: 0.0),
                   dialogs=kv, auth=None, counters=None, secret=b"k" * 32, address=("127.0.0.1", 5060),
                   registry=CollectorRegistry(), meter=publish)
    await farm.call_answered(parse_message(OK))
    key = names.sip_dialog_key(_hash("lost-bye-1"))
    assert (await kv.get(key)).value

    async def gone() -> bool:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return True
        return not entry.value
    await wait_until(gone, timeout=30, what="the record of a call without BYE to expire")
    assert usage == []


def _answered(call_id: str) -> bytes:
    return OK.replace(b"lost-bye-1", call_id.encode())


def _bye(call_id: str) -> bytes:
    return (b"BYE sip:bob@192.0.2.8:5064 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKbye-"
            + call_id.encode() + b"\r\nRoute: <sip:127.0.0.1:5060;lr;cf=sipfarm-1>\r\n"
            b"From: <sip:alice@acme.example>;tag=a\r\nTo: <sip:bob@acme.example>;tag=b\r\n"
            b"Call-ID: " + call_id.encode() + b"\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


async def test_ended_calls_leave_no_markers_behind(cluster):
    """Every ended call deletes its record; the bucket must not keep one marker per call."""
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    usage = []

    def publish(event):
        usage.append(event)

    farm = SipFarm(Settings(), "sipfarm-1", store=BindingStore(kv, clock=lambda: 0.0),
                   dialogs=kv, auth=None, counters=None, secret=b"k" * 32, address=("127.0.0.1", 5060),
                   registry=CollectorRegistry(), meter=publish)
    calls = [f"marker-{n}" for n in range(60)]
    for call_id in calls:
        await farm.call_answered(parse_message(_answered(call_id)))
        out = await farm.handle(_bye(call_id), ("UDP", "192.0.2.7", 5062))
        assert out and out[0].data.startswith(b"BYE ")
    assert len(usage) == len(calls)     # each call metered once

    async def records() -> int:
        info = await js.stream_info(f"KV_{names.BUCKET_SIP_BINDINGS}", subjects_filter=f"$KV.{names.BUCKET_SIP_BINDINGS}.d.>")
        return len(info.state.subjects or {})

    async def none_left() -> bool:
        return await records() == 0
    await wait_until(none_left, timeout=30, what="the ended calls' markers to expire")
    # A second BYE (the other party's) finds nothing and meters nothing.
    await farm.handle(_bye(calls[0]).replace(b"CSeq: 2", b"CSeq: 3"), ("UDP", "192.0.2.7", 5062))
    assert len(usage) == len(calls)
