"""sip_contact_deny_networks: the farm carries no request into a network a phone named --
a registered Contact, a binding, an in-dialog target -- judged by the address it would send
to (for a phone behind NAT, where its packets come from), with the production default."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from colony.protocols.sip.parser import parse_message
from colony.settings import SIP_CONTACT_DENY_DEFAULT, SIP_CONTACT_DENY_LOOPBACK_SERVED, Settings

from colony_sipfarm.bindings import Binding
from colony_sipfarm.farm import NetworkVerdicts, SipFarm

from test_farm import DOMAIN, ME, PHONE, Auth, Clock, Counters, Dialogs, Store, answer, forwarded_invite, invite, one, register


@pytest.fixture
def farm():
    clock = Clock()
    settings = Settings(sip_auth_failures_per_minute_per_ip=50)
    assert settings.sip_contact_deny_networks == SIP_CONTACT_DENY_DEFAULT     # what production runs with
    f = SipFarm(settings, "sipfarm-1", store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda event: None, clock=clock)
    f.clock_ = clock
    return f


async def register_from(farm, contact: str, source=PHONE, via: str = "192.0.2.7:5062", user: str = "alice"):
    """REGISTER with credentials; the final answer."""
    def req(cseq, auth=""):
        return register(user, contact, cseq=cseq, auth=auth).replace(b"192.0.2.7:5062;", f"{via};".encode(), 1)
    challenge, _ = await one(farm, req(1), source)
    assert challenge.status == 401
    final, _ = await one(farm, req(2, answer(challenge, user)), source)
    return final


@pytest.mark.parametrize("contact", [
    "<sip:alice@127.0.0.1:5432>",                     # PostgreSQL on the farm's host
    "<sip:alice@127.0.0.2:4222>",                     # all of 127/8
    "<sip:alice@[::1]:5432>",
    "<sip:alice@[::ffff:127.0.0.1]:5432>",            # IPv4-mapped: the address it carries
    "<sip:alice@169.254.169.254:80>",                 # the cloud metadata service
    "<sip:alice@0.0.0.0:5060>",
    "<sip:alice@192.0.2.7:5062;maddr=127.0.0.1>",     # maddr is where it would go
    "<sip:alice@224.0.0.1:5060>",
])
async def test_a_contact_the_farm_would_reach_in_a_denied_network_is_refused_403_with_a_warning(farm, contact):
    final = await register_from(farm, contact)
    assert final.status == 403
    code, agent, text = final.headers.get("Warning").split(" ", 2)
    assert code == "399" and agent == "127.0.0.1:5060" and text.startswith('"') and text.endswith('"')
    assert await farm.store.lookup(f"alice@{DOMAIN}") == []


async def test_a_phone_behind_nat_is_judged_by_where_its_packets_come_from_not_its_private_contact(farm):
    # A LAN phone registers its private address; the farm sends to the NAT's address.
    ok = await register_from(farm, "<sip:alice@192.168.1.20:5060>", source=("UDP", "203.0.113.5", 40000),
                             via="192.168.1.20:5060;rport")
    assert ok.status == 200
    # A phone not behind NAT on a private LAN is reached at its Contact: private is not denied.
    assert (await register_from(farm, "<sip:alice@10.1.2.3:5060>", source=("UDP", "10.1.2.3", 5060),
                                via="10.1.2.3:5060")).status == 200
    # rport asked for: the farm would send to the source, so a loopback source is what counts,
    # whatever public Contact the REGISTER names.
    refused = await register_from(farm, "<sip:alice@198.51.100.7:5060>", source=("UDP", "127.0.0.1", 40000),
                                  via="198.51.100.7:5060;rport", user="bob")
    assert refused.status == 403


async def test_unregistering_a_denied_contact_is_not_refused(farm):
    farm.store.sets[f"alice@{DOMAIN}"] = [Binding(contact="sip:alice@127.0.0.1:5432", q=1.0, expires_at=farm.clock_() + 300,
                                                  call_id="old", cseq=1, registered_at=farm.clock_(), member="sipfarm-1",
                                                  transport="UDP", source="192.0.2.7:5062", nat=False)]
    challenge, _ = await one(farm, register(contact="<sip:alice@127.0.0.1:5432>", expires="0"))
    ok, _ = await one(farm, register(contact="<sip:alice@127.0.0.1:5432>", expires="0", cseq=2, auth=answer(challenge, "alice")))
    assert ok.status == 200 and await farm.store.lookup(f"alice@{DOMAIN}") == []


async def test_a_binding_made_before_its_network_was_denied_is_not_called(farm):
    now = farm.clock_()
    farm.store.sets[f"bob@{DOMAIN}"] = [
        Binding(contact="sip:bob@127.0.0.1:5432", q=1.0, expires_at=now + 300, call_id="c", cseq=1, registered_at=now,
                member="sipfarm-1", transport="UDP", source="192.0.2.9:5060", nat=False)]
    caller = ("UDP", "198.51.100.9", 5060)
    challenge, _ = await one(farm, invite(), caller)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    unavailable, out = await one(farm, invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert unavailable.status == 480 and out.destination == caller
    # Beside a good device, only the good one rings.
    farm.store.sets[f"bob@{DOMAIN}"].append(
        Binding(contact="sip:bob@192.0.2.9:5062", q=0.5, expires_at=now + 300, call_id="d", cseq=1, registered_at=now,
                member="sipfarm-1", transport="UDP", source="192.0.2.9:5062", nat=False))
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization", nc=2)
    forwarded, out = await forwarded_invite(farm, invite(cseq=3, auth=auth, branch="z9hG4bKinv3"), caller)
    assert out.destination == ("UDP", "192.0.2.9", 5062) and forwarded.top_via().branch.endswith("-1")
    # Its failure is the caller's answer at once: the unsent branch is not waited for (Timer C).
    busy = (b"SIP/2.0 486 Busy Here\r\n" + b"".join(f"Via: {v}\r\n".encode() for v in forwarded.headers.get_all("Via"))
            + f"From: {forwarded.headers.get('From')}\r\nTo: {forwarded.headers.get('To')};tag=b9\r\n"
              f"Call-ID: {forwarded.call_id}\r\nCSeq: {forwarded.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n".encode())
    answers = [(parse_message(o.data), o.destination) for o in await farm.handle(busy, ("UDP", "192.0.2.9", 5062))]
    assert [(getattr(m, "method", None) or m.status, d) for m, d in answers] == [
        ("ACK", ("UDP", "192.0.2.9", 5062)), (486, caller)]


@pytest.mark.parametrize("target", ["sip:x@127.0.0.1:5432", "sip:x@[::1]:4222;transport=tcp", "sip:x@169.254.169.254:80"])
async def test_an_in_dialog_request_is_not_loose_routed_into_a_denied_network(farm, target):
    # A party to a dialog the farm record-routed chooses its requests' targets (the remote
    # target it learned, further Routes): its signed Route brings them here, not further.
    def route(call_id: str) -> str:
        return f"<sip:127.0.0.1:5060;lr;cf=sipfarm-1;dm={farm.routes.sign(call_id, 'a1', {'cf': 'sipfarm-1'})}>"
    for method in ("BYE", "INFO"):
        request = (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK{method}\r\n"
                   f"Route: {route(f'c-{method}')}\r\n"
                   f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: c-{method}\r\n"
                   f"CSeq: 3 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        refused, out = await one(farm, request, ("UDP", "198.51.100.9", 5060))
        assert refused.status == 403 and "399" in refused.headers.get("Warning")
        assert out.destination == ("UDP", "198.51.100.9", 5060)
    ack = (f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKack\r\n"
           f"Route: {route('c-ack')}\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\n"
           f"To: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: c-ack\r\nCSeq: 3 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    assert await farm.handle(ack, ("UDP", "198.51.100.9", 5060)) == []


def test_the_denied_networks_read_addresses_not_names():
    denied = NetworkVerdicts(SIP_CONTACT_DENY_DEFAULT)
    for host in ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "169.254.169.254", "fe80::1%eth0", "0.0.0.0",
                 "::", "255.255.255.255", "ff02::1"):
        assert host in denied, host
    for host in ("192.0.2.7", "10.0.0.1", "192.168.1.1", "2001:db8::1", "::ffff:192.0.2.1", "pbx.example.com"):
        assert host not in denied, host
    assert "127.0.0.1" not in NetworkVerdicts("")
    loopback_served = NetworkVerdicts(SIP_CONTACT_DENY_LOOPBACK_SERVED)
    assert "127.0.0.1" not in loopback_served and "::1" not in loopback_served and "169.254.169.254" in loopback_served


def test_the_setting_names_the_key_and_the_fix_when_wrong():
    with pytest.raises(ValueError) as err:
        Settings(sip_contact_deny_networks="10.0.0.0/8, inner-net")
    assert "sip_contact_deny_networks" in str(err.value) and "'inner-net'" in str(err.value)


def test_parse_message_of_a_403_warning_is_one_value():
    # The Warning's text has commas and spaces: it stays one quoted value.
    response = parse_message(b"SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKx\r\n"
                             b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
                             b'Warning: 399 127.0.0.1:5060 "a, b"\r\nContent-Length: 0\r\n\r\n')
    assert response.headers.get("Warning") == '399 127.0.0.1:5060 "a, b"'
