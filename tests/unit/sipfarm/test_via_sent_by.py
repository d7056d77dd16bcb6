"""The farm's Via names where a phone's answers go on the request's transport (RFC 3261
§18.2.2): over TLS the TLS listener, over TCP the SIP port, of the member holding the
connection the request goes out on.  The SIP port under ``SIP/2.0/TLS`` had linphone
(tests/integration/sipfarm/test_linphone.py) answer a call relayed through another member on a
new TLS connection to that port, which speaks no TLS: its 180 and 200 were lost.  And it asks
for ``rport`` (RFC 3581 §3: proxies too): a phone reached through a balancer then answers
where the request came from -- its own connection to the balancer -- not to a member's
address it cannot reach (or, over TLS, check a certificate for)."""

from __future__ import annotations

from colony.bus import names

from test_farm import ME
from test_record_route_transports import call, farm, register_bob


async def test_a_tls_callee_held_by_another_member_gets_that_members_tls_listener_in_our_via():
    f = farm()
    await register_bob(f, ("TLS", "192.0.2.7", 40004), flow_member="sipfarm-2")
    forwarded, out = await call(f, ("UDP", "198.51.100.9", 5060))
    assert out.member == names.node_key("sipfarm-2")
    assert forwarded.headers.get_all("Via")[0].startswith("SIP/2.0/TLS 127.0.0.2:5061;rport;branch=z9hG4bK-cf")


async def test_a_tcp_callee_gets_the_holders_sip_port_and_a_udp_callee_the_address_the_call_reached():
    f = farm()
    await register_bob(f, ("TCP", "192.0.2.7", 40002), flow_member="sipfarm-2")
    forwarded, _ = await call(f, ("UDP", "198.51.100.9", 5060))
    assert forwarded.headers.get_all("Via")[0].startswith("SIP/2.0/TCP 127.0.0.2:5060;")

    f = farm()
    await register_bob(f, ("TLS", "192.0.2.7", 40004))          # held here
    forwarded, _ = await call(f, ("UDP", "198.51.100.9", 5060))
    assert forwarded.headers.get_all("Via")[0].startswith("SIP/2.0/TLS 127.0.0.1:5061;")

    f = farm()
    await register_bob(f, ("UDP", "192.0.2.7", 5062))
    forwarded, _ = await call(f, ("TLS", "198.51.100.9", 40001))
    assert forwarded.headers.get_all("Via")[0].startswith(f"SIP/2.0/UDP {ME[0]}:{ME[1]};")
