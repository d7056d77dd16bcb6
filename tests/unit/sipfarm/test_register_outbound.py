"""RFC 5626 outbound at the registrar.  A REGISTER whose Contact has ``+sip.instance`` and
``reg-id`` binds that flow of the device (test_register_instance.py); when the phone also
says ``Supported: outbound`` and the farm is its first hop, the 200 says ``Require:
outbound`` (§6) -- the phone then knows its flows are kept apart and keeps them alive -- and
on a TCP, TLS or WebSocket flow ``Flow-Timer`` (§4.4.1, §5.4), how often its CRLF keep-alives must
come; over UDP its keep-alives are STUN Binding requests, which the member answers (§8).
A phone that does not ask (no ``outbound`` option tag, no reg-id: linphone sends
``+sip.instance`` and ``Supported: outbound`` without reg-id) sees no change.  Behind
another proxy (two Vias), without the Path "ob" this registrar does not keep, reg-id is
ignored -- or, when outbound was asked for, 439 First Hop Lacks Outbound Support."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.stun import MAGIC_COOKIE, binding_response
from test_farm import PHONE, answer, farm, one, register  # noqa: F401 (farm: a fixture)

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
FLOW = f"<sip:alice@192.0.2.7:40001;transport=tcp;ob>;{INSTANCE};reg-id=1"
TCP, TLS = ("TCP", "192.0.2.7", 40001), ("TLS", "192.0.2.7", 40002)
WSS = ("WSS", "192.0.2.7", 40003)


async def registered(farm, contact: str = FLOW, source=PHONE, extra: str = "Supported: path, outbound\r\n",
                     proxied: bool = False, call_id: str = "ob-1"):
    """The 200 (or what else) to alice's authenticated REGISTER from ``source``; ``proxied``:
    through another proxy, whose Via is on top."""
    def message(**kw) -> bytes:
        data = register("alice", contact, extra=extra, call_id=call_id, **kw)
        data = data.replace(b"SIP/2.0/UDP 192.0.2.7:5062", f"SIP/2.0/{source[0]} 192.0.2.7:5062".encode())
        if proxied:
            data = data.replace(b"Via: ", f"Via: SIP/2.0/UDP 198.51.100.50:5060;branch=z9hG4bK{os.urandom(4).hex()}\r\nVia: ".encode(), 1)
        return data
    challenge, _ = await one(farm, message(), source)
    if challenge.status != 401:
        return challenge
    ok, _ = await one(farm, message(cseq=2, auth=answer(challenge, "alice")), source)
    return ok


def bound(farm) -> list[tuple[str, str]]:
    return [(b.contact, b.reg_id) for b in farm.store.sets.get("alice@acme.example", [])]


@pytest.mark.parametrize("source", [TCP, TLS, WSS])
async def test_a_flow_asking_for_outbound_on_a_connection_gets_require_and_flow_timer(farm, source):
    ok = await registered(farm, source=source)
    assert ok.status == 200
    assert ok.headers.get_all("Require") == ["outbound"]
    assert ok.headers.get_all("Flow-Timer") == [str(farm.settings.sip_flow_timer)] == ["120"]
    assert f"<sip:alice@192.0.2.7:40001;transport=tcp;ob>;expires=300;q=1;{INSTANCE};reg-id=1" in ok.headers.get_all("Contact")
    assert bound(farm) == [("sip:alice@192.0.2.7:40001;transport=tcp;ob", "1")]


async def test_the_flow_timer_is_the_setting_and_zero_sends_none(farm):
    farm.settings = farm.settings.model_copy(update={"sip_flow_timer": 45})
    assert (await registered(farm, source=TCP, call_id="a")).headers.get_all("Flow-Timer") == ["45"]
    farm.settings = farm.settings.model_copy(update={"sip_flow_timer": 0})
    ok = await registered(farm, source=TCP, call_id="b")
    assert ok.headers.get_all("Require") == ["outbound"] and ok.headers.get_all("Flow-Timer") == []


async def test_over_udp_require_without_flow_timer(farm):
    """A UDP flow's keep-alives are STUN (§4.4.2), which the member answers (below)."""
    ok = await registered(farm, contact=f"<sip:alice@192.0.2.7:5062;ob>;{INSTANCE};reg-id=1")
    assert ok.status == 200 and ok.headers.get_all("Require") == ["outbound"]
    assert ok.headers.get_all("Flow-Timer") == []


async def test_a_require_outbound_is_understood_and_other_tags_still_get_420(farm):
    ok = await registered(farm, source=TCP, extra="Require: outbound\r\n")
    assert ok.status == 200 and ok.headers.get_all("Require") == ["outbound"]
    refused = await registered(farm, source=TCP, extra="Supported: outbound\r\nRequire: outbound, gruu\r\n", call_id="c2")
    assert refused.status == 420 and refused.headers.get_all("Unsupported") == ["gruu"]


@pytest.mark.parametrize("contact, extra, source", [
    # linphone: +sip.instance and Supported: outbound, but no reg-id.
    (f"<sip:alice@192.0.2.7:40001;transport=tcp>;{INSTANCE}", "Supported: replaces, outbound, gruu\r\n", TCP),
    # reg-id and instance, but the phone did not say outbound (RFC 3261 §20.32: no Require then).
    (FLOW, "Supported: replaces, gruu\r\n", TCP),
    (FLOW, "", TCP),
    # reg-id without an instance is no flow (§6).
    ("<sip:alice@192.0.2.7:40001;transport=tcp;ob>;reg-id=1", "Supported: outbound\r\n", TCP),
])
async def test_a_phone_not_asking_for_outbound_sees_no_change(farm, contact, extra, source):
    ok = await registered(farm, contact=contact, extra=extra, source=source)
    assert ok.status == 200
    assert ok.headers.get_all("Require") == [] and ok.headers.get_all("Flow-Timer") == []
    # The rest of the 200 as before: the binding and its Contact.
    assert len(ok.headers.get_all("Contact")) == 1 and len(bound(farm)) == 1


async def test_behind_another_proxy_asking_for_outbound_gets_439_and_binds_nothing(farm):
    refused = await registered(farm, source=TCP, proxied=True)
    assert refused.status == 439 and refused.reason == "First Hop Lacks Outbound Support"
    assert bound(farm) == []


async def test_behind_another_proxy_without_asking_the_reg_id_is_ignored(farm):
    ok = await registered(farm, source=TCP, proxied=True, extra="")
    assert ok.status == 200 and ok.headers.get_all("Require") == []
    assert bound(farm) == [("sip:alice@192.0.2.7:40001;transport=tcp;ob", "")]
    assert ok.headers.get_all("Contact") == [f"<sip:alice@192.0.2.7:40001;transport=tcp;ob>;expires=300;q=1;{INSTANCE}"]


# --- STUN keep-alives over UDP (RFC 5626 §8) --------------------------------------------

def binding_request(attributes: bytes = b"", kind: int = 0x0001) -> tuple[bytes, bytes]:
    transaction = os.urandom(12)
    return struct.pack("!HHI", kind, len(attributes), MAGIC_COOKIE) + transaction + attributes, transaction


def mapped(response: bytes, transaction: bytes) -> tuple[str, int]:
    kind, length, cookie = struct.unpack_from("!HHI", response)
    assert (kind, cookie, response[8:20]) == (0x0101, MAGIC_COOKIE, transaction) and length == len(response) - 20
    attribute, size, _, family, xport = struct.unpack_from("!HHBBH", response, 20)
    assert attribute == 0x0020 and size == len(response) - 24
    key = MAGIC_COOKIE.to_bytes(4, "big") + transaction
    address = bytes(a ^ b for a, b in zip(response[28:28 + (4 if family == 1 else 16)], key))
    return str(ipaddress.ip_address(address)), xport ^ (MAGIC_COOKIE >> 16)


async def test_a_stun_binding_request_over_udp_is_answered_with_its_source(farm):
    request, transaction = binding_request()
    [out] = await farm.handle(request, PHONE)
    assert out.destination == PHONE and mapped(out.data, transaction) == ("192.0.2.7", 5062)
    assert farm.metrics.stun._value.get() == 1
    assert farm.metrics.dropped.labels(reason="unparsable")._value.get() == 0


async def test_a_stun_request_over_ipv6_and_with_fingerprint_and_software(farm):
    software = b"linphone"
    attributes = struct.pack("!HH", 0x8022, len(software)) + software + struct.pack("!HHI", 0x8028, 4, 0)
    request, transaction = binding_request(attributes)
    source = ("UDP", "2001:db8::7", 5062)
    [out] = await farm.handle(request, source)
    assert out.destination == source and mapped(out.data, transaction) == ("2001:db8::7", 5062)


@pytest.mark.parametrize("data", [
    binding_request(kind=0x0111)[0],                                       # an error response
    binding_request(kind=0x0011)[0],                                       # an indication
    binding_request(struct.pack("!HHI", 0x0024, 4, 1))[0],                 # PRIORITY: comprehension-required, unknown
    binding_request()[0][:-1],                                             # cut short
    binding_request()[0].replace(MAGIC_COOKIE.to_bytes(4, "big"), b"\0\0\0\0"),   # RFC 3489, no cookie
], ids=["error-response", "indication", "unknown-required-attribute", "cut-short", "no-magic-cookie"])
async def test_anything_else_stun_like_is_dropped_unanswered(farm, data):
    assert await farm.handle(data, PHONE) == []
    assert farm.metrics.stun._value.get() == 0


async def test_stun_is_answered_over_udp_only(farm):
    assert await farm.handle(binding_request()[0], TCP) == []
    assert binding_response(binding_request()[0], "not an address", 1) is None
