"""Async clients for the directory request/reply subjects, for processes without a
``DirectoryCache`` (a cache answers the same questions from memory).

    client = DirectoryClient(nc)
    entry = await client.lookup(EntryKind.ADDRESS, "amy@acme.example")   # a model or None
    answers = await client.resolve(["kim@acme-mail.example", "team@acme.example"])
    accounts = await client.domain_accounts("acme.example")               # every account's address

No answer in time (or no admin API running) raises ``DirectoryUnavailable``: a temporary
failure (SMTP 451 4.3.0), never "unknown user".
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from colony.bus import names
from colony.telemetry import inject_headers
from colony.contracts.directory import (
    DirectoryLookupReply,
    DirectoryLookupRequest,
    DomainAccountsReply,
    DomainAccountsRequest,
    EntryKind,
    MAX_ACCOUNTS_PAGE,
)
from colony.contracts.recipients import (
    MAX_RECIPIENTS_PER_REQUEST,
    RecipientsReply,
    RecipientsRequest,
    Resolution,
)


class DirectoryUnavailable(RuntimeError):
    """The directory service did not answer (or answered an error): try again later."""


class DirectoryClient:
    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self.nc, self.timeout = nc, timeout

    async def _ask(self, subject: str, payload: bytes) -> bytes:
        try:
            return (await self.nc.request(subject, payload, timeout=self.timeout,
                                          headers=inject_headers() or None)).data
        except NoRespondersError as exc:
            # Told apart from silence: nobody serves the subject (no admin API up, or not
            # yet subscribed) is a different fault from one that did not answer in time.
            raise DirectoryUnavailable(f"no responder on {subject}") from exc
        except (NatsTimeoutError, TimeoutError) as exc:
            raise DirectoryUnavailable(f"no answer on {subject} within {self.timeout:g}s") from exc

    async def lookup(self, kind: EntryKind | str, name: str):
        """The directory entry (``DomainEntry``, ``AccountEntry``, ...) or None."""
        reply = DirectoryLookupReply.from_bytes(await self._ask(
            names.DIRECTORY_LOOKUP, DirectoryLookupRequest(kind=kind, name=name).to_bytes()))
        if reply.error:
            raise DirectoryUnavailable(reply.error)
        return reply.entry if reply.found else None

    async def resolve(self, recipients: list[str]) -> list[Resolution]:
        """One ``Accepted`` or ``Refused`` per recipient, in order (any number: sent in chunks)."""
        out: list[Resolution] = []
        for i in range(0, len(recipients), MAX_RECIPIENTS_PER_REQUEST):
            chunk = recipients[i:i + MAX_RECIPIENTS_PER_REQUEST]
            reply = RecipientsReply.from_bytes(await self._ask(
                names.DIRECTORY_RECIPIENTS, RecipientsRequest(recipients=chunk).to_bytes()))
            if reply.error or len(reply.results) != len(chunk):
                raise DirectoryUnavailable(reply.error or "the service answered for other recipients")
            out.extend(r.resolution() for r in reply.results)
        return out

    async def domain_accounts(self, domain: str, page: int = MAX_ACCOUNTS_PAGE) -> list[str]:
        """Every account address of ``domain`` (not its aliases), a page per request."""
        out: list[str] = []
        after: str | None = None
        while True:
            reply = DomainAccountsReply.from_bytes(await self._ask(
                names.DIRECTORY_DOMAIN_ACCOUNTS, DomainAccountsRequest(domain=domain, after=after, limit=page).to_bytes()))
            if reply.error:
                raise DirectoryUnavailable(reply.error)
            out.extend(reply.accounts)
            if reply.next_after is None:
                return out
            after = reply.next_after
