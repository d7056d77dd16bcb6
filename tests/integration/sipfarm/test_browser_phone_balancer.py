"""A browser phone through the compose deployment's balancer: headless chromium opens
``wss://<haproxy>/sip`` on the HTTPS frontend (TLS ended there, as on 443), which hands the
upgrade to a member's plain WS listener behind a PROXY v2 header -- the frontend's rule and
the ``sipfarm_ws`` backend taken from ``infra/haproxy/haproxy.cfg`` itself, only the server
line made static (no Docker DNS here).  The member requires the header from the balancer's
address (``proxy_protocol_from``), so a phone that registers at all came through it; its
binding's source is the browser's address, not haproxy's.  It then calls a phone on the
other member's WSS listener and is called by it: the Record-Route a WebSocket party is given
(the member's own address) serves a browser behind the balancer as one in front of it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from chromium import chromium, trust_ca
from cluster_harness import wait_until
from test_browser_phone import events, open_phone, page_url, run, ws_url  # noqa: F401 (page_url: a fixture)
from test_sipfarm import bindings
from test_transports import start_tls_members
from tools import free_ports, need_tool

pytestmark = pytest.mark.slow

HAPROXY_CFG = Path(__file__).resolve().parents[3] / "infra" / "haproxy" / "haproxy.cfg"
BALANCER = "127.0.0.8"       # haproxy's source address towards the members (proxy_protocol_from)


def compose_sections() -> dict[str, list[str]]:
    """infra/haproxy/haproxy.cfg's sections by their header line, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        elif current is not None:
            current.append(line.strip())
    return sections


def balancer_config(port: int, pem: Path, member_ws: str) -> str:
    """The compose balancer's browser-phone path, on ``port`` with ``pem``, to ``member_ws``."""
    sections = compose_sections()
    [frontend] = [lines for header, lines in sections.items()
                  if header.startswith("frontend") and any(re.match(r"use_backend \S+ if .*path /sip\b", line) for line in lines)]
    [rule] = [line for line in frontend if line.startswith("use_backend") and "path /sip" in line]
    backend_name = rule.split()[1]
    [bind] = [line for line in frontend if re.match(r"bind\s+\S*:443\s+ssl\b", line)]
    bind = re.sub(r"^bind\s+\S*:443", f"bind 127.0.0.1:{port}", bind)
    bind = re.sub(r"crt\s+\S+", f"crt {pem}", bind)
    kept = [line for line in frontend if not line.startswith(("bind", "default_backend"))]
    backend = [line for line in sections[f"backend {backend_name}"]
               if not line.startswith(("server", "option httpchk", "http-check"))]
    [template] = [line for line in sections[f"backend {backend_name}"] if line.startswith("server-template")]
    options = " ".join(template.split()[4:])          # after "server-template name N host:port"
    body = "\n    ".join
    return f"""
global
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 1h
    timeout server 1h

frontend web
    option httplog
    {bind}
    {body(kept)}
    default_backend nowhere

backend nowhere
    mode http

backend {backend_name}
    {body(backend)}
    server m1 {member_ws} {options} source {BALANCER}
"""


@pytest.fixture
async def balanced(cluster, tmp_path):
    """Two members (SHA-256 digest first, for crypto.subtle) trusting the balancer's header;
    haproxy with the compose file's browser-phone path in front of member 1's WS listener."""
    haproxy = need_tool("haproxy")
    addresses, tls = await start_tls_members(cluster, tmp_path, COLONY_SIP_DIGEST_ALGORITHMS="SHA-256,MD5",
                                             COLONY_PROXY_PROTOCOL_FROM=f"{BALANCER}/32")
    pem = tmp_path / "balancer.pem"
    pem.write_bytes(Path(tls.cert).read_bytes() + Path(tls.key).read_bytes())
    (port,) = free_ports(1)
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer_config(port, pem, addresses[0]["sip_ws"].rpartition("//")[2]))
    log = tmp_path / "haproxy.log"
    proc = await asyncio.create_subprocess_exec(haproxy, "-f", str(config), "-db", stdout=log.open("wb"),
                                                stderr=asyncio.subprocess.STDOUT)

    async def up() -> bool:
        assert proc.returncode is None, log.read_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True
    await wait_until(up, 30, "haproxy to listen")
    yield addresses, tls.ca, f"wss://127.0.0.1:{port}/sip", log
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@pytest.fixture
def browser(balanced, tmp_path):
    _, ca, _, _ = balanced
    home = tmp_path / "home"
    trust_ca(home, ca)
    with chromium(tmp_path / "profile", home=home) as driver:
        driver.set_script_timeout(60)
        yield driver


async def test_a_browser_phone_through_the_balancer_s_wss_registers_and_calls(balanced, page_url, browser, cluster):  # noqa: F811
    addresses, _, balancer_url, log = balanced

    alice = await open_phone(browser, page_url, "alice", balancer_url)
    bob = await open_phone(browser, page_url, "bob", ws_url(addresses[1]["sip_wss"], "wss"))
    for window in (alice, bob):
        assert await run(browser, window, "return await window.phone.open();") == "sip", log.read_text()
        assert await run(browser, window, "return await window.phone.register();") == 200
    seen = await events(browser, alice)
    assert seen[0] == "open sip ext=", seen          # the subprotocol came back through haproxy
    [a] = await bindings(cluster, "alice")
    # WS at member 1 (TLS ended at haproxy), from the browser's address the header carried
    assert (a["transport"], a["member"]) == ("WS", "sipfarm-1")
    assert a["source"].rpartition(":")[0] == "127.0.0.1", a

    # alice (behind the balancer) calls bob, and bob hangs up; then bob calls alice
    assert await run(browser, alice, "return await window.phone.call('bob');") == 200

    async def acked(window: str, count: int) -> bool:
        return sum(e.startswith("ack ") for e in await events(browser, window)) == count
    await wait_until(lambda: acked(bob, 1), 30, "bob's page to get the ACK", interval=0.3)
    assert await run(browser, alice, "return await window.phone.inDialog('MESSAGE', 'through the balancer', 'text/plain');") == 200
    assert await run(browser, bob, "return await window.phone.inDialog('BYE');") == 200
    assert (await events(browser, alice))[-1] == "rx BYE"

    assert await run(browser, bob, "return await window.phone.call('alice');") == 200
    await wait_until(lambda: acked(alice, 1), 30, "alice's page to get the ACK", interval=0.3)
    assert await run(browser, alice, "return await window.phone.inDialog('BYE');") == 200
    assert not any(e.startswith("close") or e == "error" for e in await events(browser, alice) + await events(browser, bob))

    # haproxy logs the upgrade it passed (101) when the tab's WebSocket closes: chromium's
    # is HTTP/1.1 (also with an HTTP/2 connection to the balancer open: no RFC 8441 here)
    await asyncio.to_thread(lambda: (browser.switch_to.window(alice), browser.close()))

    async def logged() -> bool:
        return any(" sipfarm_ws/m1 " in line and " 101 " in line and '"GET /sip HTTP/1.1"' in line
                   for line in log.read_text().splitlines())
    await wait_until(logged, 15, "haproxy to log the upgrade")
