"""Browser phones against the SIP farm's WebSocket transport (RFC 7118), in a real browser:
Debian's headless chromium under Selenium opens ``new WebSocket(url, "sip")`` to one member's
WS listener and another's WSS listener -- the browser's own handshake (Origin, its key and
version, its permessage-deflate offer), masking and framing -- and a page of ours
(``browser_phone.html``) writes the SIP: Via and Contact on ``.invalid`` hosts (§5), digest
answers computed with ``crypto.subtle`` (SHA-256: SubtleCrypto has no MD5, so the farm offers
``SHA-256,MD5``).  The farm's certificate is checked by chromium against the cluster's CA,
trusted in the browser's NSS database (``chromium.trust_ca``), not waved through by a flag.
Two pages register, and one calls the other through the farm: INVITE with SDP, 180/200 from
the callee page, ACK, MESSAGE in the dialog, OPTIONS and MESSAGE outside it, BYE.  What each
page saw comes back as its ``window.events``."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urlencode

import pytest

from chromium import chromium, trust_ca
from cluster_harness import wait_until
from test_sipfarm import DOMAIN, PASSWORDS, bindings
from test_transports import start_tls_members

pytestmark = pytest.mark.slow

PAGE = Path(__file__).with_name("browser_phone.html")


@pytest.fixture
async def members(cluster, tmp_path):
    """Two members offering SHA-256 first, with a certificate of the cluster's CA for 127.0.0.1."""
    addresses, tls = await start_tls_members(cluster, tmp_path, COLONY_SIP_DIGEST_ALGORITHMS="SHA-256,MD5")
    yield addresses, tls.ca


@pytest.fixture
def page_url():
    """The phone page, served over http://127.0.0.1 (a secure context: crypto.subtle is there)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PAGE.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{PAGE.name}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(members, tmp_path):
    _, ca = members
    home = tmp_path / "home"
    trust_ca(home, ca)
    with chromium(tmp_path / "profile", home=home) as driver:
        driver.set_script_timeout(60)
        yield driver


def ws_url(address: str, scheme: str) -> str:
    return f"{scheme}://{address.rpartition('//')[2]}"


async def run(driver, window: str, script: str):
    """``script`` in the page of ``window``; a promise it returns is awaited (WebDriver does).
    In a thread: the credentials are served on this test's event loop, which must go on."""
    def call():
        driver.switch_to.window(window)
        return driver.execute_script(script)
    return await asyncio.to_thread(call)


async def events(driver, window: str) -> list[str]:
    return await run(driver, window, "return window.events.slice();")


async def open_phone(driver, page_url: str, user: str, url: str, **extra: str) -> str:
    """A new tab with ``user``'s phone page for the WebSocket ``url``; its window handle."""
    def open_tab() -> str:
        driver.switch_to.new_window("tab")
        query = {"url": url, "user": user, "password": PASSWORDS[user], "domain": DOMAIN, **extra}
        driver.get(page_url + "?" + urlencode(query))
        return driver.current_window_handle
    return await asyncio.to_thread(open_tab)


async def register_both(driver, alice: str, bob: str) -> None:
    for window in (alice, bob):
        assert await run(driver, window, "return await window.phone.open();") == "sip"
        assert await run(driver, window, "return await window.phone.register();") == 200


async def test_two_browser_phones_register_and_call_each_other_through_the_farm(members, page_url, browser, cluster):
    addresses, _ = members

    # alice over ws:// at member 1, bob over wss:// (chromium checking the certificate) at member 2
    alice = await open_phone(browser, page_url, "alice", ws_url(addresses[0]["sip_ws"], "ws"))
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"))
    for window in (alice, bob):
        assert await run(browser, window, "return await window.phone.open();") == "sip"
        assert await run(browser, window, "return await window.phone.register();") == 200
        seen = await events(browser, window)
        # the handshake named the subprotocol and took no extension (chromium offers permessage-deflate)
        assert seen[0] == "open sip ext=", seen
        assert seen[1:] == ["rx 401 REGISTER", "auth 401 SHA-256 offered=SHA-256,MD5", "rx 200 REGISTER",
                            "registered 200"], seen
    [a] = await bindings(cluster, "alice")
    [b] = await bindings(cluster, "bob")
    assert (a["transport"], a["member"]) == ("WS", "sipfarm-1")
    assert (b["transport"], b["member"]) == ("WSS", "sipfarm-2")

    # alice calls bob: 407, SHA-256 again, bob's page rings and answers, alice ACKs
    assert await run(browser, alice, "return await window.phone.call('bob');") == 200
    async def acked() -> bool:
        return any(e.startswith("ack ") for e in await events(browser, bob))
    await wait_until(acked, 30, "bob's page to get the ACK", interval=0.3)
    assert await run(browser, alice, "return await window.phone.inDialog('MESSAGE', 'hello in the call', 'text/plain');") == 200
    # outside the dialog: OPTIONS and MESSAGE to bob's address of record, through the farm
    assert await run(browser, alice, "return (await window.phone.request('OPTIONS', 'sip:bob@' + window.phone.domain, "
                               "'<sip:bob@' + window.phone.domain + '>')).status;") == 200
    assert await run(browser, alice, "return (await window.phone.request('MESSAGE', 'sip:bob@' + window.phone.domain, "
                               "'<sip:bob@' + window.phone.domain + '>', {body: 'hello ☎ ü', ctype: 'text/plain'})).status;") == 200
    assert await run(browser, alice, "return await window.phone.inDialog('BYE');") == 200

    caller = await events(browser, alice)
    assert "rx 100 INVITE" in caller      # the farm's own 100 Trying (§16.2): it races the 180 across members
    assert [e for e in caller[5:] if e != "rx 100 INVITE"] == [
        "rx 407 INVITE", "auth 407 SHA-256 offered=SHA-256,MD5", "rx 180 INVITE", "rx 200 INVITE",
        "call 200",
        "rx 200 MESSAGE", "MESSAGE in dialog 200",
        "rx 407 OPTIONS", "auth 407 SHA-256 offered=SHA-256,MD5", "rx 200 OPTIONS",
        "rx 407 MESSAGE", "auth 407 SHA-256 offered=SHA-256,MD5", "rx 200 MESSAGE",
        "rx 200 BYE", "BYE in dialog 200"], caller
    callee = await events(browser, bob)
    expected = ["rx INVITE", "invite from", "rx ACK", "ack sip:", "rx MESSAGE", "message hello in the call",
                "rx OPTIONS", "rx MESSAGE", "message hello ☎ ü", "rx BYE"]
    assert len(callee) == 5 + len(expected) and all(e.startswith(x) for e, x in zip(callee[5:], expected)), callee
    invite_via = next(e for e in callee if e.startswith("invite from"))
    assert "SIP/2.0/WSS" in invite_via, invite_via        # bob's own transport in the farm's top Via

    # and the other way: bob calls alice, alice's page answers, and the callee (alice) hangs up
    assert await run(browser, bob, "return await window.phone.call('alice');") == 200
    async def alice_acked() -> bool:
        return sum(e.startswith("ack ") for e in await events(browser, alice)) == 1
    await wait_until(alice_acked, 30, "alice's page to get the ACK", interval=0.3)
    assert await run(browser, alice, "return await window.phone.inDialog('BYE');") == 200
    assert (await events(browser, bob))[-1] == "rx BYE"
    assert not any(e.startswith("close") or e == "error" for e in await events(browser, alice) + await events(browser, bob))


async def test_a_browser_phones_crlf_keepalive_gets_a_pong(members, page_url, browser):
    """SIP.js's ``keepAliveInterval`` sends CRLFCRLF as a WebSocket message and waits for a
    CRLF (RFC 5626 §4.4.1's keep-alive, which the farm answers on every stream)."""
    addresses, _ = members
    await asyncio.to_thread(browser.get, page_url + "?" + urlencode(
        {"url": ws_url(addresses[0]["sip_ws"], "ws"), "user": "alice", "password": PASSWORDS["alice"], "domain": DOMAIN}))
    window = browser.current_window_handle
    assert await run(browser, window, "return await window.phone.open();") == "sip"
    await run(browser, window, "window.phone.ping();")

    async def ponged() -> bool:
        return "pong" in await events(browser, window)
    await wait_until(ponged, 15, "a CRLF pong", interval=0.3)
    assert await run(browser, window, "return await window.phone.register();") == 200      # the flow goes on


async def test_a_call_to_a_browser_phone_whose_tab_closed_fails_with_480(members, page_url, browser):
    """Closing the tab closes its WebSocket (1001 going away): the farm drops the flow, and a
    call to the phone, still registered, fails at once instead of ringing into silence --
    also when the INVITE went onto the WebSocket before the farm saw it close (it fails with
    430 as the flow closes, colony_sipfarm.workload._Flow.ringing)."""
    addresses, _ = members
    alice = await open_phone(browser, page_url, "alice", ws_url(addresses[0]["sip_ws"], "ws"))
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"))
    await register_both(browser, alice, bob)
    await asyncio.to_thread(lambda: (browser.switch_to.window(bob), browser.close()))
    assert await run(browser, alice, "return await window.phone.call('bob');") == 480


async def test_without_the_cluster_ca_chromium_refuses_the_wss_listener(members, page_url, tmp_path):
    """The other tests' WSS works because chromium trusts the cluster's CA, not because it
    checks nothing: without it in the NSS database the same page's wss:// fails."""
    addresses, _ = members
    home = tmp_path / "untrusting-home"
    home.mkdir()
    with chromium(tmp_path / "untrusting-profile", home=home) as driver:
        driver.set_script_timeout(60)
        url = page_url + "?" + urlencode({"url": ws_url(addresses[0]["sip_wss"], "wss"), "user": "alice",
                                          "password": PASSWORDS["alice"], "domain": DOMAIN})
        await asyncio.to_thread(driver.get, url)
        outcome = await run(driver, driver.current_window_handle,
                            "return await window.phone.open().then(p => 'open ' + p, e => 'refused');")
        assert outcome == "refused"
        # and plain ws:// in that browser is fine: the refusal is the certificate's
        url = url.replace(urlencode({"url": ws_url(addresses[0]["sip_wss"], "wss")}),
                          urlencode({"url": ws_url(addresses[0]["sip_ws"], "ws")}))
        await asyncio.to_thread(driver.get, url)
        assert await run(driver, driver.current_window_handle, "return await window.phone.open();") == "sip"


@pytest.mark.parametrize("alice_via, bob_via", [("TCP", "WS"), ("WSS", "WSS")])
async def test_browser_phones_whose_via_names_another_transport_still_call(members, page_url, browser, cluster,
                                                                         alice_via, bob_via):
    """Stacks may write a Via transport other than the connection's: JsSIP's hack_via_tcp and
    SIP.js's hackViaTcp write TCP (for servers that did not know WS), and a phone on ws://
    may write WSS.  What the farm sends back goes on the connection, whatever the Via says."""
    addresses, _ = members
    alice = await open_phone(browser, page_url, "alice", ws_url(addresses[0]["sip_ws"], "ws"), via=alice_via)
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"), via=bob_via)
    await register_both(browser, alice, bob)
    [a] = await bindings(cluster, "alice")
    [b] = await bindings(cluster, "bob")
    assert (a["transport"], b["transport"]) == ("WS", "WSS")        # the connection's, not the Via's
    assert await run(browser, alice, "return await window.phone.call('bob');") == 200
    async def acked() -> bool:
        return any(e.startswith("ack ") for e in await events(browser, bob))
    await wait_until(acked, 30, "bob's page to get the ACK", interval=0.3)
    assert await run(browser, bob, "return await window.phone.inDialog('BYE');") == 200
    assert (await events(browser, alice))[-1] == "rx BYE"
    assert await run(browser, bob, "return await window.phone.call('alice');") == 200
    assert await run(browser, bob, "return await window.phone.inDialog('BYE');") == 200


async def test_a_reloaded_browser_phone_is_called_on_its_new_connection(members, page_url, browser, cluster):
    """A reload drops the page's WebSocket without unregistering and registers a new Contact
    on a new connection: the call forks to both bindings, the dead flow's branch fails at once
    (430, never heard) and the new tab answers."""
    addresses, _ = members
    alice = await open_phone(browser, page_url, "alice", ws_url(addresses[0]["sip_ws"], "ws"))
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"))
    await register_both(browser, alice, bob)
    await asyncio.to_thread(lambda: (browser.switch_to.window(bob), browser.refresh()))
    assert await run(browser, bob, "return await window.phone.open();") == "sip"
    assert await run(browser, bob, "return await window.phone.register();") == 200
    assert len(await bindings(cluster, "bob")) == 2
    assert await run(browser, alice, "return await window.phone.call('bob');") == 200
    assert await run(browser, alice, "return await window.phone.inDialog('BYE');") == 200
    assert (await events(browser, bob))[-1] == "rx BYE"


async def test_a_webrtc_offer_and_answer_of_the_browser_go_through_the_farm_whole(members, page_url, browser):
    """The INVITE carries chromium's own SDP (RTCPeerConnection: audio and video, DTLS
    fingerprint, ICE candidates) and the 200 the callee browser's answer to it; each side's
    RTCPeerConnection takes the other's, which it would not if the farm had cut or changed
    a body (Content-Length, framing of a message several KiB long)."""
    addresses, _ = members
    alice = await open_phone(browser, page_url, "alice", ws_url(addresses[0]["sip_ws"], "ws"))
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"))
    await register_both(browser, alice, bob)
    assert await run(browser, alice, "return await window.phone.call('bob', true);") == 200
    caller = await events(browser, alice)
    assert "webrtc answer taken" in caller, caller
    size = next(int(e.split()[2]) for e in caller if e.startswith("webrtc offer "))
    assert size > 2000, caller          # a browser's offer, not a few lines of dummy SDP
    assert "webrtc offer taken" in await events(browser, bob)
    assert await run(browser, alice, "return await window.phone.inDialog('BYE');") == 200
