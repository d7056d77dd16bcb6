"""Signed Record-Routes (route_signature.py): the farm loose-routes a request only on a Route
it wrote for that request's dialog.  The signer alone (any tampering fails), then a member
with the bus faked (test_farm.py's fakes): a forged Route is refused and goes nowhere, a real
dialog's requests from either side pass, on any member, and a dialog made before the farm
signed keeps working while its call record lives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from colony.protocols.sip.uri import parse_address
from colony.settings import Settings

from colony_sipfarm.bindings import Binding
from colony_sipfarm.farm import SipFarm
from colony_sipfarm.route_signature import LENGTH, RouteSigner

from test_farm import DOMAIN, ME, Auth, Clock, Counters, Dialogs, Store, answer, forwarded_invite, invite, one, registered

SECRET = b"k" * 32
CALLER = ("UDP", "198.51.100.9", 5060)
CALLEE = ("UDP", "192.0.2.7", 5062)
STRANGER = ("UDP", "203.0.113.66", 5060)

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
params = st.fixed_dictionaries({"cf": text}, optional={"fc": text, "fe": text})


@given(call_id=text, tag=text, signed=params)
def test_a_signature_verifies_for_its_call_id_and_tag_whatever_the_other_tag(call_id, tag, signed):
    signer = RouteSigner(SECRET)
    mac = signer.sign(call_id, tag, signed)
    assert len(mac) == LENGTH
    route = {**signed, "dm": mac}
    assert signer.verify(route, call_id, [tag, "callee-tag"])        # the caller's request
    assert signer.verify(route, call_id, ["callee-tag", tag])        # the callee's: tags swapped
    assert signer.verify({**route, "dm": mac.upper()}, call_id, [tag, ""])   # hex is hex
    assert RouteSigner(SECRET).verify(route, call_id, [tag])         # another member, same secret


@given(call_id=text, tag=text, signed=params, data=st.data())
def test_any_tampering_fails(call_id, tag, signed, data):
    signer = RouteSigner(SECRET)
    route = {**signed, "dm": signer.sign(call_id, tag, signed)}
    what = data.draw(st.sampled_from(["call_id", "tag", "param", "dropped param", "mac", "secret"]))
    other = data.draw(text)
    if what == "call_id":
        if other != call_id:
            assert not signer.verify(route, other, [tag])
    elif what == "tag":
        if tag not in (other, other + "x"):      # either of the two tags tried may be the signed one
            assert not signer.verify(route, call_id, [other, other + "x"])
    elif what == "param":
        name = data.draw(st.sampled_from(["cf", "fc", "fe"]))
        if other != (signed.get(name) or ""):
            assert not signer.verify({**route, name: other}, call_id, [tag])
    elif what == "dropped param":
        name = data.draw(st.sampled_from(sorted(signed)))
        if signed[name]:
            assert not signer.verify({k: v for k, v in route.items() if k != name}, call_id, [tag])
    elif what == "mac":
        mac = data.draw(st.text(max_size=LENGTH + 2))
        if mac.lower() != route["dm"]:
            assert not signer.verify({**route, "dm": mac}, call_id, [tag])
    else:
        assert not RouteSigner(b"another farm's secret").verify(route, call_id, [tag])


def test_no_mac_or_a_mac_of_another_length_fails():
    signer = RouteSigner(SECRET)
    mac = signer.sign("c", "t", {"cf": "m"})
    assert not signer.verify({"cf": "m"}, "c", ["t"])
    assert not signer.verify({"cf": "m", "dm": None}, "c", ["t"])
    assert not signer.verify({"cf": "m", "dm": mac[:-1]}, "c", ["t"])
    assert not signer.verify({"cf": "m", "dm": mac + "0"}, "c", ["t"])
    assert not signer.verify({"cf": "m", "dm": "é" * LENGTH}, "c", ["t"])     # no TypeError either


# --- the farm ---------------------------------------------------------------------------


def member(name: str = "sipfarm-1", clock: Clock | None = None, store=None, dialogs=None, **settings) -> SipFarm:
    clock = clock or Clock()
    settings.setdefault("sip_auth_failures_per_minute_per_ip", 50)
    f = SipFarm(Settings(**settings), name, store=store or Store(clock), dialogs=dialogs or Dialogs(), auth=Auth(),
                counters=Counters(), secret=SECRET, address=ME, registry=CollectorRegistry(), meter=lambda e: None,
                clock=clock)
    f.clock_ = clock
    return f


@pytest.fixture
def farm():
    return member()


def in_dialog(method: str, route: str, target: str, from_tag: str = "a1", to_tag: str = "b1", call_id: str = "call-1",
              sender: str = "alice", receiver: str = "bob", via: str = "198.51.100.9:5060", cseq: int = 3) -> bytes:
    return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{method}{cseq}{from_tag}\r\n"
            f"Route: {route}\r\nFrom: <sip:{sender}@{DOMAIN}>;tag={from_tag}\r\n"
            f"To: <sip:{receiver}@{DOMAIN}>;tag={to_tag}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def call(farm: SipFarm) -> str:
    """alice calls bob through ``farm`` and bob answers: the Record-Route the dialog uses."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, _ = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    route = forwarded.headers.get("Record-Route")
    ok = (b"SIP/2.0 200 OK\r\n" + b"".join(f"Via: {v}\r\n".encode() for v in forwarded.headers.get_all("Via"))
          + f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: call-1\r\n"
            f"CSeq: 2 INVITE\r\nRecord-Route: {route}\r\nContact: <sip:bob@192.0.2.7:5062>\r\n"
            f"Content-Length: 0\r\n\r\n".encode())
    answered, out = await one(farm, ok, CALLEE)
    assert answered.status == 200 and out.destination == CALLER
    return route


def refused(farm: SipFarm) -> float:
    return farm.metrics.dropped.labels(reason="forged route")._value.get()


async def test_a_real_dialogs_requests_pass_from_either_side_and_through_any_member(farm):
    route = await call(farm)
    assert parse_address(route).uri.params["dm"]
    # The caller's ACK and INFO (its From-tag is the signed one) go to bob.
    sent, out = await one(farm, in_dialog("ACK", route, "sip:bob@192.0.2.7:5062", cseq=2), CALLER)
    assert sent.method == "ACK" and out.destination == CALLEE
    sent, out = await one(farm, in_dialog("INFO", route, "sip:bob@192.0.2.7:5062"), CALLER)
    assert sent.method == "INFO" and out.destination == CALLEE and "Route" not in sent.headers
    # Another member (same farm secret, its own state) takes bob's BYE: tags swapped.
    other = member("sipfarm-2", clock=farm.clock_, store=farm.store, dialogs=farm.dialogs)
    bye = in_dialog("BYE", route, "sip:alice@198.51.100.9:5060", from_tag="b1", to_tag="a1", sender="bob",
                    receiver="alice", via="192.0.2.7:5062", cseq=1)
    sent, out = await one(other, bye, CALLEE)
    assert sent.method == "BYE" and out.destination == CALLER
    assert refused(farm) == refused(other) == 0


async def test_a_forged_route_is_refused_404_and_goes_nowhere(farm):
    route = await call(farm)
    uri = parse_address(route).uri
    target = "sip:victim@192.0.2.200:5060"      # outside sip_contact_deny_networks: a relay's target
    forgeries = {
        "unsigned, unknown dialog": ("<sip:127.0.0.1:5060;lr;cf=sipfarm-1>", "stranger-1", "x1", "y1"),
        "garbage MAC": ("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;dm=" + "0" * LENGTH + ">", "call-1", "a1", "b1"),
        "real Route, another Call-ID": (route, "stranger-2", "a1", "b1"),
        "real Route, other tags": (route, "call-1", "m1", "m2"),
        "real Route, flow added": (route.replace(";dm=", f";fe={'TCP|10.0.0.5|25|sipfarm-1'.encode().hex()};dm="),
                                   "call-1", "a1", "b1"),
        "real Route, another member": (route.replace("cf=sipfarm-1", "cf=sipfarm-9"), "call-1", "a1", "b1"),
    }
    assert uri.params["cf"] == "sipfarm-1"
    for n, (name, (forged, call_id, from_tag, to_tag)) in enumerate(forgeries.items(), start=1):
        for method in ("BYE", "INVITE", "MESSAGE"):
            request = in_dialog(method, forged, target, from_tag=from_tag, to_tag=to_tag, call_id=call_id, cseq=10 + n)
            answer_, out = await one(farm, request, STRANGER)
            assert answer_.status == 404 and out.destination == STRANGER, (name, method)
        # An ACK cannot be answered: nothing at all.
        assert await farm.handle(in_dialog("ACK", forged, target, from_tag=from_tag, to_tag=to_tag, call_id=call_id),
                                 STRANGER) == [], name
    assert refused(farm) == 4 * len(forgeries)
    # The dialog itself still works.
    sent, out = await one(farm, in_dialog("BYE", route, "sip:bob@192.0.2.7:5062", cseq=50), CALLER)
    assert sent.method == "BYE" and out.destination == CALLEE


async def test_a_dialog_made_before_signing_passes_while_its_call_record_lives(farm):
    """An unsigned Route (a member of the previous version record-routed the INVITE) is taken
    while the call's record (written at its 2xx) is on the bus, and never after the BYE."""
    await call(farm)                            # writes the record of call-1
    legacy = "<sip:127.0.0.1:5060;lr;cf=sipfarm-1>"
    sent, out = await one(farm, in_dialog("INFO", legacy, "sip:bob@192.0.2.7:5062"), CALLER)
    assert sent.method == "INFO" and out.destination == CALLEE
    bye = in_dialog("BYE", legacy, "sip:alice@198.51.100.9:5060", from_tag="b1", to_tag="a1", sender="bob",
                    receiver="alice", via="192.0.2.7:5062", cseq=1)
    sent, out = await one(farm, bye, CALLEE)
    assert sent.method == "BYE" and out.destination == CALLER
    # The BYE ended the record: the unsigned Route now proves nothing.
    again, out = await one(farm, in_dialog("INFO", legacy, "sip:bob@192.0.2.7:5062", cseq=9), CALLER)
    assert again.status == 404 and out.destination == CALLER


async def test_unsigned_routes_are_not_looked_up_once_no_old_record_can_be_left():
    farm = member(sip_dialog_record_ttl=60)
    await call(farm)
    legacy = "<sip:127.0.0.1:5060;lr;cf=sipfarm-1>"
    farm.clock_.now += 61                       # the record would still be in the fake bus
    asked = []
    get = farm.dialogs.get

    async def counted(key):
        asked.append(key)
        return await get(key)
    farm.dialogs.get = counted
    refusal, _ = await one(farm, in_dialog("INFO", legacy, "sip:bob@192.0.2.7:5062"), CALLER)
    assert refusal.status == 404 and asked == []


async def test_a_browser_phones_signed_route_keeps_its_flow_and_a_changed_flow_is_refused(farm):
    """The flows (fc/fe) are signed with the dialog: a party cannot point them elsewhere."""
    ws_phone = ("WSS", "203.0.113.5", 40123)
    farm.store.sets[f"bob@{DOMAIN}"] = [Binding(
        contact="sip:k3@x.invalid;transport=ws", q=1.0, expires_at=farm.clock_.now + 300, call_id="ws", cseq=1,
        registered_at=farm.clock_.now, member="sipfarm-2", transport="WSS", source="203.0.113.5:40123", nat=False)]
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    forwarded, out = await forwarded_invite(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    route = forwarded.headers.get("Record-Route")
    assert ";fe=" in route and ";dm=" in route
    sent, out = await one(farm, in_dialog("ACK", route, "sip:k3@x.invalid;transport=ws", cseq=2), CALLER)
    assert out.destination == ws_phone and out.member == "sipfarm-2"
    fe = parse_address(route).uri.params["fe"]
    elsewhere = route.replace(fe, "TCP|10.0.0.5|25|sipfarm-1".encode().hex())
    refusal, out = await one(farm, in_dialog("BYE", elsewhere, "sip:k3@x.invalid;transport=ws"), CALLER)
    assert refusal.status == 404 and out.destination == CALLER
