"""The recipient policy of the MX: RCPT TO answered from the directory cache, with the
limits of each recipient's class of service (message size, recipients, quota).

With SRS on (an ``Srs``: ``colony_edge.forwarding.load_srs``), forwarding targets outside
the cluster are accepted as ``AcceptedRecipient.remote`` (the acceptor sends them through
OUTBOUND with an SRS sender), and a RCPT to an SRS address in a hosted domain -- a bounce
of mail we forwarded -- is reversed to the original sender: 550 when the address is forged,
malformed or expired, so nobody can relay through us by making one up."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from colony.contracts.recipients import Resolution
from colony.outbound.srs import Srs, SrsError, is_srs
from colony.protocols.smtp import Reply, events as E, replies as R
from colony_edge.smtp_policy import ACCEPT, AcceptedRecipient, BasePolicy, SmtpSession, Verdict, refuse

log = logging.getLogger("colony.edge.recipients")

DIRECTORY_NOT_READY = Reply(451, "4.3.0", "Directory not loaded yet; try again later", "directory_not_ready")
REMOTE_ONLY = Reply(451, "4.3.0", "Forwarding to remote domains is not available here yet; try again later",
                    "remote_forwarding")


class RecipientDirectory(Protocol):
    """What the policy needs of ``colony.contracts.cache.DirectoryCache``."""

    loaded: asyncio.Event

    def resolve(self, recipient: str) -> Resolution: ...
    def limits_of(self, address: str) -> dict[str, Any] | None: ...
    def domain(self, name: str) -> Any: ...
    def domain_alias(self, name: str) -> Any: ...


NO_POSTMASTER = Reply(550, "5.1.1", "No postmaster mailbox is configured here (COLONY_POSTMASTER_ADDRESS)",
                      "no_postmaster")


SRS_REFUSED = {"forged": "Invalid SRS address (its signature does not match)",
               "expired": "Expired SRS address (the forwarded message is too old for a bounce)",
               "malformed": "Invalid SRS address"}


class RecipientPolicy(BasePolicy):
    def __init__(self, directory: RecipientDirectory, postmaster: str = "", srs: Srs | None = None,
                 clock=time.time) -> None:
        self.directory = directory
        self.postmaster = postmaster   # where <Postmaster> and postmaster@<a hosted domain> without one go
        self.srs, self.clock = srs, clock

    def _hosted(self, domain: str) -> bool:
        return bool(self.directory.domain(domain) or self.directory.domain_alias(domain))

    def _srs_bounce(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict | None:
        """A RCPT to an SRS address of a hosted domain: reversed and accepted for the
        original sender, or refused 550.  None: not an SRS address of ours."""
        address = rcpt.address
        if self.srs is None or not is_srs(address) or not self._hosted(address.rpartition("@")[2].lower()):
            return None
        try:
            original = self.srs.reverse(address, self.clock())
        except SrsError as exc:
            log.warning("RCPT %s refused: %s", address, exc)
            return refuse(Reply(550, "5.1.1", SRS_REFUSED[exc.reason], f"srs_{exc.reason}"))
        domain = original.rpartition("@")[2].lower()
        if self._hosted(domain):
            resolution = self.directory.resolve(original)
            if not resolution.ok:
                return refuse(Reply(resolution.code, resolution.status, resolution.text, str(resolution.reason)))
            session.recipients.append(AcceptedRecipient(rcpt, resolution.mailboxes, tuple(resolution.remote)))
        else:
            session.recipients.append(AcceptedRecipient(rcpt, (), (original,)))
        log.info("RCPT %s: bounce of forwarded mail, for %s", address, original)
        return ACCEPT

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        if not self.directory.loaded.is_set():
            # An incomplete copy could say "unknown user" for a real one: say "later" instead.
            return refuse(DIRECTORY_NOT_READY)
        address = rcpt.address
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
            if not self.postmaster:
                return refuse(NO_POSTMASTER)
            address = self.postmaster
        bounce = self._srs_bounce(session, rcpt)
        if bounce is not None:
            return bounce
        resolution = self.directory.resolve(address)
        if (not resolution.ok and self.postmaster and address.partition("@")[0].lower() == "postmaster"
                and str(resolution.reason) == "unknown_user"):
            # Every hosted domain has a postmaster (RFC 5321 §4.5.1): the cluster's, unless the
            # domain provisioned its own.
            resolution = self.directory.resolve(self.postmaster)
        if not resolution.ok:
            return refuse(Reply(resolution.code, resolution.status, resolution.text, str(resolution.reason)))
        if not resolution.mailboxes and (self.srs is None or not resolution.remote):
            return refuse(REMOTE_ONLY)
        declared = session.mail_from.size if session.mail_from else None
        max_size = session.max_message_size
        for mailbox in resolution.mailboxes:
            limits = self.directory.limits_of(mailbox.address) or {}
            most = limits.get("max_recipients_per_message")
            if most is not None and len(session.recipients) + 1 > most:
                return refuse(R.TOO_MANY_RECIPIENTS)
            size_limit = limits.get("max_message_bytes")
            if size_limit is not None:
                if declared is not None and declared > size_limit:
                    return refuse(R.MESSAGE_TOO_BIG)
                max_size = size_limit if max_size is None else min(max_size, size_limit)
            quota = limits.get("quota_bytes")
            if quota is not None and declared is not None and declared > quota:
                # The message can never fit: permanent.  Current usage is the mail store's to
                # check (it knows the mailbox); it answers over-quota with a bounce.
                return refuse(R.QUOTA_PERMANENT)
        if resolution.remote and self.srs is None:
            # Without an SRS key forwarded mail would fail SPF at the destination: the local
            # mailboxes get the message, the remote targets do not.  Said loudly, so it is
            # not a silent loss.
            log.warning("RCPT %s: forwarding to %d remote address(es) not delivered (no SRS key: set "
                        "COLONY_SRS_SECRET_FILE or COLONY_CLUSTER_SECRET_FILE)", rcpt.address, len(resolution.remote))
        session.max_message_size = max_size
        remote = tuple(resolution.remote) if self.srs is not None else ()
        session.recipients.append(AcceptedRecipient(rcpt, resolution.mailboxes, remote))
        return ACCEPT
