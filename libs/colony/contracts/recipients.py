"""Recipient resolution: one address in, final mailboxes (or one typed refusal) out.

Theory of operation
-------------------
``resolve(view, recipient)`` is pure: it reads the directory only through ``view`` (a
``DirectoryView``: ``DirectoryCache`` on an edge, the admin API's read model for the
request/reply service, a dict in tests) and never blocks, so every door of the cluster
answers the same address the same way.

1. The address is normalised (local part lower-cased, domain lower-cased and IDNA-encoded).
2. Its domain is looked up; a domain alias stands for its real domain
   (``kim@acme-mail.example`` is ``kim@acme.example``).  A domain we do not host is *remote*:
   as the recipient of ``RCPT TO`` it is refused (we are not an open relay); as the target
   of an alias or of forwarding it is a remote address the answer lists for outbound delivery.
3. An alias expands to its targets; an account with forwarding expands to its forwarding
   addresses, plus itself when it keeps a copy; an active account without forwarding is a
   final mailbox.  Targets expand recursively.
4. Bounds: an address already on the current expansion path is a loop and is skipped; the
   path is at most ``limits.max_depth`` long; at most ``limits.max_results`` final
   addresses (mailboxes + remote); at most ``limits.max_steps`` addresses visited in all
   (diamonds of aliases cannot blow up).  Duplicates are delivered once.
5. One answer per recipient: ``Accepted`` with the mailboxes (each with its domain's home
   region, so an edge can route to the right region) and remote addresses, or ``Refused``
   with the SMTP reply to give.  A target inside an expansion that cannot take mail
   (unknown, disabled, suspended) is skipped; only when nothing at all is left does the
   recipient get a refusal: the first one met, or "routing loop" when only loops remained.

Refusals and their replies (``Refusal``)::

    unknown user            550 5.1.1
    domain not hosted here  550 5.7.1   (relaying denied)
    domain suspended        450 4.2.1   (temporary: a suspension is usually lifted, and the
                                         sender's queue keeps the mail until it is)
    account disabled        550 5.2.1
    mail not in its class   550 5.2.1
    routing loop            550 5.4.6
    expansion too large     550 5.5.3
    bad address             501 5.1.3

``colony.dir.recipients`` (``names.DIRECTORY_RECIPIENTS``, served by the admin API with this
same resolver)::

    request  {"recipients": ["kim@acme-mail.example", "team@acme.example"]}   (at most 1000)
    reply    {"results": [
                {"recipient": "kim@acme-mail.example", "ok": true,
                 "mailboxes": [{"address": "kim@acme.example", "domain": "acme.example", "home_region": "eu"}],
                 "remote": []},
                {"recipient": "nobody@acme.example", "ok": false,
                 "code": 550, "status": "5.1.1", "reason": "unknown_user", "text": "no such user here"}]}
          or {"results": [], "error": "bad request: ..."}
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from colony.bus.tokens import normalise_domain
from colony.contracts import entitlements
from colony.contracts.directory import ACTIVE, AccountInfo, AliasInfo, DomainInfo


class DirectoryView(Protocol):
    """What the resolver needs to read; names are already normalised."""

    def domain(self, name: str) -> DomainInfo | None: ...
    def domain_alias(self, name: str) -> str | None: ...   # the real domain of an alias
    def address(self, address: str) -> AccountInfo | AliasInfo | None: ...
    def cos(self, name: str) -> dict | None: ...            # a class of service's limits


class Refusal(StrEnum):
    UNKNOWN_USER = "unknown_user"
    NOT_LOCAL = "not_local"
    DOMAIN_SUSPENDED = "domain_suspended"
    ACCOUNT_DISABLED = "account_disabled"
    MAIL_NOT_ENABLED = "mail_not_enabled"
    LOOP = "loop"
    TOO_MANY = "too_many"
    BAD_ADDRESS = "bad_address"


REPLIES: dict[Refusal, tuple[int, str, str]] = {
    Refusal.UNKNOWN_USER: (550, "5.1.1", "no such user here"),
    Refusal.NOT_LOCAL: (550, "5.7.1", "relaying denied: domain not hosted here"),
    Refusal.DOMAIN_SUSPENDED: (450, "4.2.1", "domain is suspended; try again later"),
    Refusal.ACCOUNT_DISABLED: (550, "5.2.1", "mailbox disabled"),
    Refusal.MAIL_NOT_ENABLED: (550, "5.2.1", "mailbox does not receive mail"),
    Refusal.LOOP: (550, "5.4.6", "routing loop in aliases or forwarding"),
    Refusal.TOO_MANY: (550, "5.5.3", "address expands to too many recipients"),
    Refusal.BAD_ADDRESS: (501, "5.1.3", "bad recipient address syntax"),
}


class Limits(NamedTuple):
    max_depth: int = 10       # aliases/forwarding hops from the recipient to a final mailbox
    max_results: int = 1000   # final mailboxes + remote addresses of one recipient
    max_steps: int = 10_000   # addresses visited while expanding one recipient
    default_cos: str | None = entitlements.DEFAULT_COS  # class of a domain that has none

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """``recipient_max_depth``, ``recipient_max_results`` and ``default_cos`` of
        ``colony.settings.Settings``."""
        return cls(settings.recipient_max_depth, settings.recipient_max_results, 10 * settings.recipient_max_results,
                   settings.default_cos)


class Mailbox(NamedTuple):
    address: str
    domain: str
    home_region: str     # the region whose stores take the mail (a moving domain's target from routing on)


class Accepted(NamedTuple):
    recipient: str
    mailboxes: tuple[Mailbox, ...]
    remote: tuple[str, ...]   # addresses in domains we do not host (outbound delivery)

    ok: bool = True

    @property
    def reason(self) -> None:
        """No refusal (so ``resolution.reason`` reads the same on both kinds of answer)."""
        return None


class Refused(NamedTuple):
    recipient: str
    reason: Refusal

    ok: bool = False

    @property
    def code(self) -> int:
        return REPLIES[self.reason][0]

    @property
    def status(self) -> str:
        return REPLIES[self.reason][1]

    @property
    def text(self) -> str:
        return REPLIES[self.reason][2]

    def smtp_reply(self) -> str:
        """``550 5.1.1 no such user here``"""
        return f"{self.code} {self.status} {self.text}"


Resolution = Accepted | Refused


# An address already in normal form (what edges see nearly always): no work to do.
_NORMAL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+")
_UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f]")


def normalise_address(address: str) -> str | None:
    """``Kim@ACME.example.`` -> ``kim@acme.example``; None if it is not an address we could host."""
    if len(address) <= 254 and _NORMAL.fullmatch(address):
        return address
    address = address.strip(" \t")  # not CR/LF: those make it a bad address
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or len(local) > 64 or len(address) > 254:
        return None
    if _UNPRINTABLE.search(address):
        return None
    domain = normalise_domain(domain)
    if not domain or len(domain) > 253 or "@" in domain:
        return None
    return f"{local.lower()}@{domain}"


class _TooMany(Exception):
    pass


class _Expansion:
    """The state of one recipient's expansion (steps, results, the first refusal met)."""

    __slots__ = ("view", "limits", "mailboxes", "remote", "first_refusal", "looped", "steps")

    def __init__(self, view: DirectoryView, limits: Limits) -> None:
        self.view, self.limits = view, limits
        self.mailboxes: dict[str, Mailbox] = {}
        self.remote: dict[str, None] = {}
        self.first_refusal: Refusal | None = None
        self.looped = False
        self.steps = 0

    def refuse(self, reason: Refusal) -> None:
        if self.first_refusal is None:
            self.first_refusal = reason

    def _count(self) -> None:
        if len(self.mailboxes) + len(self.remote) > self.limits.max_results:
            raise _TooMany

    def visit(self, address: str, path: tuple[str, ...], top: bool) -> None:
        if address in path or len(path) > self.limits.max_depth:
            self.looped = True
            return
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise _TooMany
        view = self.view
        local, _, domain = address.rpartition("@")
        info = view.domain(domain)
        if info is None:
            real = view.domain_alias(domain)
            info = view.domain(real) if real else None
            if info is None:
                if top:
                    self.refuse(Refusal.NOT_LOCAL)
                else:
                    self.remote[address] = None
                    self._count()
                return
            address = f"{local}@{real}"
            if address in path:
                self.looped = True
                return
        if info.state != ACTIVE:
            self.refuse(Refusal.DOMAIN_SUSPENDED)
            return
        entry = view.address(address)
        if entry is None:
            self.refuse(Refusal.UNKNOWN_USER)
            return
        if type(entry) is AliasInfo:
            inner = path + (address,)
            for target in entry.targets:
                normal = normalise_address(target)
                if normal is not None:
                    self.visit(normal, inner, False)
            return
        if entry.state != ACTIVE:
            self.refuse(Refusal.ACCOUNT_DISABLED)
            return
        if not _receives_mail(view, entry, info, self.limits.default_cos):
            self.refuse(Refusal.MAIL_NOT_ENABLED)
            return
        if entry.forwarding:
            inner = path + (address,)
            for target in entry.forwarding:
                normal = normalise_address(target)
                if normal is not None:
                    self.visit(normal, inner, False)
            if not entry.keep_copy:
                return
        if address not in self.mailboxes:
            self.mailboxes[address] = Mailbox(address, info.name, info.mail_region)
            self._count()


def _receives_mail(view: DirectoryView, account: AccountInfo, domain: DomainInfo, default_cos: str | None) -> bool:
    if account.services is not None and "mail" not in account.services:
        return False
    cos_name = entitlements.cos_name(account.cos, domain.cos, default_cos)
    if cos_name:
        limits = view.cos(cos_name)
        services = limits.get("services") if limits else None
        if services is not None and "mail" not in services:
            return False
    return True


def resolve(view: DirectoryView, recipient: str, limits: Limits = Limits()) -> Resolution:
    """The one answer for ``recipient``: see the theory of operation above."""
    address = normalise_address(recipient)
    if address is None:
        return Refused(recipient, Refusal.BAD_ADDRESS)
    # The common case, answered without the expansion machinery (it is every RCPT TO of
    # an edge): an active account, no forwarding, in an active hosted domain.
    info = view.domain(address[address.rindex("@") + 1:])
    if info is not None and info.state == ACTIVE:
        entry = view.address(address)
        if (type(entry) is AccountInfo and entry.state == ACTIVE and not entry.forwarding
                and _receives_mail(view, entry, info, limits.default_cos)):
            return Accepted(recipient, (Mailbox(address, info.name, info.mail_region),), ())
    expansion = _Expansion(view, limits)
    try:
        expansion.visit(address, (), True)
    except _TooMany:
        return Refused(recipient, Refusal.TOO_MANY)
    except RecursionError:  # only if max_depth is set beyond the interpreter's stack
        return Refused(recipient, Refusal.TOO_MANY)
    if expansion.mailboxes or expansion.remote:
        return Accepted(recipient, tuple(expansion.mailboxes.values()), tuple(expansion.remote))
    if expansion.first_refusal is not None:
        return Refused(recipient, expansion.first_refusal)
    return Refused(recipient, Refusal.LOOP if expansion.looped else Refusal.UNKNOWN_USER)


def account_limits(view: DirectoryView, address: str,
                   default_cos: str | None = entitlements.DEFAULT_COS) -> dict[str, Any] | None:
    """What a final mailbox may use (``entitlements.effective``): quota, message size,
    recipients per message, services.  None if ``address`` is not an account."""
    entry = view.address(address)
    if type(entry) is not AccountInfo:
        return None
    domain = view.domain(address.rpartition("@")[2])
    cos_name = entitlements.cos_name(entry.cos, domain.cos if domain else None, default_cos)
    cos = view.cos(cos_name) if cos_name else None
    return entitlements.effective({"services": list(entry.services) if entry.services is not None else None,
                                   "quota_bytes": entry.quota_bytes}, cos)


def resolve_all(view: DirectoryView, recipients: list[str], limits: Limits = Limits()) -> list[Resolution]:
    return [resolve(view, r, limits) for r in recipients]


# --- colony.dir.recipients -------------------------------------------------------------------

MAX_RECIPIENTS_PER_REQUEST = 1000


class MailboxOut(BaseModel):
    address: str
    domain: str
    home_region: str


class RecipientResult(BaseModel):
    """One recipient's answer: ``ok`` with mailboxes and remote addresses, or the refusal."""

    recipient: str
    ok: bool
    mailboxes: list[MailboxOut] = Field(default_factory=list)
    remote: list[str] = Field(default_factory=list)
    code: int | None = None
    status: str | None = None
    reason: Refusal | None = None
    text: str | None = None

    @classmethod
    def of(cls, resolution: Resolution) -> RecipientResult:
        if isinstance(resolution, Accepted):
            return cls(recipient=resolution.recipient, ok=True, remote=list(resolution.remote),
                       mailboxes=[MailboxOut(**m._asdict()) for m in resolution.mailboxes])
        return cls(recipient=resolution.recipient, ok=False, code=resolution.code, status=resolution.status,
                   reason=resolution.reason, text=resolution.text)

    def resolution(self) -> Resolution:
        if self.ok:
            return Accepted(self.recipient, tuple(Mailbox(m.address, m.domain, m.home_region) for m in self.mailboxes),
                            tuple(self.remote))
        return Refused(self.recipient, self.reason or Refusal.UNKNOWN_USER)


class RecipientsRequest(BaseModel):
    """``{"recipients": ["kim@acme.example", ...]}`` (1 to 1000 addresses)"""

    model_config = ConfigDict(extra="forbid")

    recipients: list[Annotated[str, Field(max_length=512)]] = Field(min_length=1,
                                                                      max_length=MAX_RECIPIENTS_PER_REQUEST)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RecipientsRequest:
        return cls.model_validate_json(data)


class RecipientsReply(BaseModel):
    """``{"results": [<RecipientResult>, ...]}`` in request order, or ``{"results": [], "error": "..."}``"""

    results: list[RecipientResult]
    error: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RecipientsReply:
        return cls.model_validate_json(data)


