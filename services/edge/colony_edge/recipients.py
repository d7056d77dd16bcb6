"""The recipient policy of the MX: RCPT TO answered from the directory cache, with the
limits of each recipient's class of service (message size, recipients, quota)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from colony.contracts.recipients import Resolution
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


NO_POSTMASTER = Reply(550, "5.1.1", "No postmaster mailbox is configured here (COLONY_POSTMASTER_ADDRESS)",
                      "no_postmaster")


class RecipientPolicy(BasePolicy):
    def __init__(self, directory: RecipientDirectory, postmaster: str = "") -> None:
        self.directory = directory
        self.postmaster = postmaster   # where <Postmaster> and postmaster@<a hosted domain> without one go

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
        resolution = self.directory.resolve(address)
        if (not resolution.ok and self.postmaster and address.partition("@")[0].lower() == "postmaster"
                and str(resolution.reason) == "unknown_user"):
            # Every hosted domain has a postmaster (RFC 5321 §4.5.1): the cluster's, unless the
            # domain provisioned its own.
            resolution = self.directory.resolve(self.postmaster)
        if not resolution.ok:
            return refuse(Reply(resolution.code, resolution.status, resolution.text, str(resolution.reason)))
        if not resolution.mailboxes:
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
        if resolution.remote:
            # Outbound delivery has no contract yet: the local mailboxes get the message, the
            # remote forwarding targets do not.  Said loudly, so it is not a silent loss.
            log.warning("RCPT %s: forwarding to %d remote address(es) not delivered (no outbound path yet)",
                        rcpt.address, len(resolution.remote))
        session.max_message_size = max_size
        session.recipients.append(AcceptedRecipient(rcpt, resolution.mailboxes))
        return ACCEPT
