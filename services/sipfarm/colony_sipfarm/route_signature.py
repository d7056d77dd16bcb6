"""Signed Record-Routes: a Route naming the farm is followed only if the farm wrote it.

Theory of operation
-------------------
The farm record-routes every INVITE it forwards (RFC 3261 §16.6 step 4), so the dialog's
later requests (ACK of the 2xx, re-INVITE, BYE, INFO, ...) come back with a Route naming a
member, and are loose-routed on (§16.4, §16.12) to the Request-URI or the next Route.  Those
requests cannot be challenged: the farm authenticated the caller's INVITE, not the callee,
and neither party keeps a digest session for the proxy.  A Route naming the farm is text
anyone can write, so without a proof any stranger could send "in-dialog" BYEs, INVITEs and
MESSAGEs through the farm to any host outside ``sip_contact_deny_networks`` -- a relay for
spam and toll fraud, and a reflector.

The farm keeps no dialog state of its own (any member takes any packet), so the proof rides
in the Record-Route URI, as OpenSIPS's topology hiding and Kamailio's ``ftag`` check tie a
Route to its dialog: a ``dm`` parameter, an HMAC under a key derived from the farm secret
(every member has it, so any member checks any member's Route) over

* the Call-ID and the From-tag of the dialog-creating INVITE.  Each later request of the
  dialog carries that tag: as its From-tag when the caller sends it, as its To-tag when the
  callee does (§12.2.1.1: the callee's requests swap From and To), so ``verify`` accepts
  either tag -- the callee's own tag did not exist when the Route was signed;
* the parameters the farm acts on: ``cf`` (the member) and ``fc``/``fe`` (the caller's and
  callee's connections, on which in-dialog requests go out).  Unsigned, a flow token could
  name any transport, address and member, and a member would dial a TCP connection there.

The URI's host and port are not covered: they only brought the request to a member, and a
SIP ALG may rewrite them.  Parameter order and the case of their names are not covered
either (each value is read by name), so a phone that prints the URI back differently still
matches.

What it does not prove: that the dialog is still up, or where its requests go.  A party to a
dialog chooses its requests' Request-URI (the remote target it learned) and further Routes,
and a stateless proxy cannot tell those from others; it can aim only its own dialog's
requests (its Call-ID and tags), and ``sip_contact_deny_networks`` still applies to them.

Routes written before the farm signed (no ``dm``) are the farm's business (``farm.py``): they
are followed only while the dialog's call record is on the bus.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

PARAM = "dm"              # the MAC's URI parameter
SIGNED = ("cf", "fc", "fe")  # the farm's own Record-Route parameters, covered by the MAC
LENGTH = 24               # hex digits kept (96 bits): an online forger gets one guess per packet
_HEX = frozenset("0123456789abcdef")


class RouteSigner:
    """Signs and checks the ``dm`` parameter of the farm's Record-Routes (pure; no I/O)."""

    def __init__(self, secret: bytes) -> None:
        # Its own key, not the branch or nonce key: a MAC made for one use is never valid for another.
        self._key = hashlib.sha256(b"colony sip record-route\x00" + secret).digest()

    def sign(self, call_id: str, tag: str, params: Mapping[str, str | None]) -> str:
        """The ``dm`` value for a Record-Route with ``params`` (``cf``, ``fc``, ``fe``) put on
        the dialog-creating request with ``call_id`` and From-tag ``tag``."""
        # Each field length-prefixed: no choice of Call-ID or tag reads as another's split.
        fields = (call_id, tag, *(params.get(name) or "" for name in SIGNED))
        text = "".join(f"{len(f)}:{f}" for f in fields)
        return hmac.digest(self._key, text.encode(), "sha256").hex()[:LENGTH]

    def verify(self, params: Mapping[str, str | None], call_id: str, tags: Iterable[str]) -> bool:
        """``params`` (a Route URI's) carry a ``dm`` this farm made for ``call_id`` and one
        of ``tags`` (the request's From-tag and To-tag; "" for a missing one)."""
        given = (params.get(PARAM) or "").lower()
        if len(given) != LENGTH or not _HEX.issuperset(given):
            return False    # compare_digest also refuses non-ASCII text with a TypeError
        # Both tags are always tried: which one matched must not show in the time taken.
        results = [hmac.compare_digest(self.sign(call_id, tag, params), given) for tag in tags]
        return any(results)
