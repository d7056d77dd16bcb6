"""ACL commands (RFC 4314) on a mail store process: grants to a colleague are kept in the
account's journal, grants to another domain are refused."""

from __future__ import annotations

import asyncio
import imaplib

from test_imap_mailstore import BOB, DOMAIN, PASSWORD, imap, world  # noqa: F401  (fixtures)


def _acl_session(host: str, port: int) -> dict:
    out = {}
    with imaplib.IMAP4(host, port, timeout=30) as m:
        m.login(BOB, PASSWORD)
        out["caps"] = m.capabilities
        out["grant"] = m.setacl("Archive", f"alice@{DOMAIN}", "lrs")[0]
        out["foreign"] = m.setacl("Archive", "eve@other.test", "lr")
        out["myrights"] = m.myrights("Archive")[1]
        m.logout()
    with imaplib.IMAP4(host, port, timeout=30) as m:    # a new session reads it from the store
        m.login(BOB, PASSWORD)
        out["acl"] = m.getacl("Archive")[1]
        out["delete"] = m.deleteacl("Archive", f"alice@{DOMAIN}")[0]
        out["after"] = m.getacl("Archive")[1]
        m.logout()
    return out


async def test_acl_grants_kept_and_other_domains_refused(imap):
    _world, host, port, _view, _ = imap
    r = await asyncio.to_thread(_acl_session, host, port)
    assert "ACL" in r["caps"] and "RIGHTS=TEXK" in r["caps"]    # shared folders can be opened
    assert r["grant"] == "OK"
    assert r["foreign"][0] == "NO" and b"[CANNOT]" in r["foreign"][1][0]
    assert r["myrights"] == [b'"Archive" lrswipkxteacd']      # astrings as atoms, as Dovecot sends them
    assert r["acl"] == [f'"Archive" {BOB} lrswipkxteacd alice@{DOMAIN} lrs'.encode()]
    assert r["delete"] == "OK"
    assert r["after"] == [f'"Archive" {BOB} lrswipkxteacd'.encode()]
