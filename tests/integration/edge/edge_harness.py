"""The edge suites' harness: an edge process on a real nats-server, with a provisioned
directory written into the ``directory`` bucket exactly as the admin API's projection writes
it.  A module of its own, not conftest.py, so tests import it by a name no other test
directory has (two conftest modules in one pytest run shadow each other)."""

from __future__ import annotations

import json
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cluster_harness import ClusterHarness
from colony.bus import names


DOMAINS = ["example.com", "example.org", "example.net"]
ACCOUNTS = {"example.com": ["bob", "carol", "dave", "erin"], "example.org": ["frank", "grace", "heidi"],
            "example.net": ["ivan", "judy", "mallory"]}


@dataclass
class Edge:
    harness: ClusterHarness
    node_id: str
    host: str
    port: int
    ca: Path

    @property
    def pid(self) -> int:
        return self.harness.nodes[self.node_id].process.pid

    def smtp(self, timeout: float = 60) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, local_hostname="client.test", timeout=timeout)

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    async def stream_messages(self):
        """Every MAIL message (read without consuming: the work queue stays as the mailstore finds it)."""
        js = (await self.harness.client()).jetstream()
        info = await js.stream_info(names.STREAM_MAIL)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            try:
                out.append(await js.get_msg(names.STREAM_MAIL, seq))
            except Exception:  # deleted meanwhile
                continue
        return out


async def provision(harness: ClusterHarness, cos_limits: dict | None = None) -> None:
    js = (await harness.client()).jetstream()
    kv = await js.key_value(names.BUCKET_DIRECTORY)
    seq = 0

    async def put(kind: str, name: str, value: dict) -> None:
        nonlocal seq
        seq += 1
        await kv.put(names.directory_key(kind, name), json.dumps({**value, "seq": seq}).encode())

    for domain in DOMAINS:
        await put(names.AGG_DOMAIN, domain, {"kind": "domain", "name": domain, "state": "active",
                                             "home_region": "local", "cos": "small" if domain == "example.net" else None})
        for name in ACCOUNTS[domain]:
            await put(names.AGG_ADDRESS, f"{name}@{domain}", {"kind": "account", "address": f"{name}@{domain}",
                                                              "domain": domain, "name": name})
    await put(names.AGG_ADDRESS, "team@example.com", {"kind": "alias", "address": "team@example.com",
                                                      "domain": "example.com", "name": "team",
                                                      "targets": ["bob@example.com", "frank@example.org"]})
    await put(names.AGG_DOMAIN_ALIAS, "example-mail.com", {"kind": "domain_alias", "name": "example-mail.com",
                                                          "domain": "example.com"})
    await put(names.AGG_DOMAIN, "suspended.test", {"kind": "domain", "name": "suspended.test", "state": "suspended",
                                                   "home_region": "local"})
    await put(names.AGG_ADDRESS, "x@suspended.test", {"kind": "account", "address": "x@suspended.test",
                                                      "domain": "suspended.test", "name": "x"})
    await put(names.AGG_COS, "small", {"kind": "cos", "name": "small",
                                       "limits": cos_limits or {"max_message_bytes": 100_000}})
