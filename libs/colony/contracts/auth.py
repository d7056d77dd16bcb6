"""The authentication contracts: the PLAIN check and SIP digest credentials, with their client.

Both are served by the admin API over NATS request/reply (queue group ``admin-api``).  Unknown
user and wrong password give the same answer (no account enumeration); failures are
throttled per account and per client address; a user in a domain alias
(``alice@acme-alias.example``) is the account in the real domain.

``colony.auth.check`` (``names.AUTH_CHECK``)::

    request  {"user": "alice@acme.example", "password": "...", "service": "imap", "remote_addr": "198.51.100.7"}
             ("service" and "remote_addr" may be null or absent)
    reply    {"ok": true, "account": "alice@acme.example", "domain": "acme.example",
              "services": ["mail", "imap", ...], "quota_bytes": 1073741824 | null,
              "max_message_bytes": ... | null, "max_recipients_per_message": ... | null,
              "sending_rate_per_hour": ... | null}
          or {"ok": false, "reason": "invalid credentials" | "service not enabled" | "account disabled"
                                    | "throttled" | "temporarily unavailable" | "bad request: ..."
                                    | "internal error",
              "retry_after": 2.5}   (retry_after only with "throttled": seconds)

The requester says how long it waits for the answer in the ``Colony-Timeout`` header
(seconds, ``TIMEOUT_HEADER``; absent: ``DEFAULT_TIMEOUT``).  The service sheds what it cannot
answer in time: a request still queued for a password hash when its requester's wait is over
gets no answer at all (nobody listens for it any more), and one that finds the queue of
pending hashes full is answered ``"temporarily unavailable"`` at once -- a temporary
failure, never "wrong password".  ``AuthClient`` raises ``AuthUnavailable`` for it, like for
a timeout.

``colony.auth.sip`` (``names.AUTH_SIP_CREDENTIALS``): the HA1 of RFC 7616 for one realm,
never the password::

    request  {"user": "alice" | "alice@acme.example", "realm": "acme.example", "algorithm": "MD5" | "SHA-256"}
    reply    {"ok": true, "username": "alice", "realm": "acme.example", "algorithm": "MD5", "ha1": "<hex>"}
          or {"ok": false, "reason": "unknown user" | "account disabled" | "service not enabled"
                                    | "no SIP credentials (set a password)" | "bad request: ..."}

``AuthClient(nc)`` sends these and returns the typed replies; a timeout or no responder
(or a "temporarily unavailable" reply) raises ``AuthUnavailable`` (answer the client with a temporary failure, never "wrong
password").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from colony.bus import names
from colony.telemetry import inject_headers

DIGEST_ALGORITHMS: tuple[str, ...] = ("MD5", "SHA-256")

# How long the requester waits (seconds): the service drops a request whose wait is over.
# Relative, not a wall-clock deadline, so the hosts' clocks need not agree.
TIMEOUT_HEADER = "Colony-Timeout"
DEFAULT_TIMEOUT = 5.0


class AuthFailure(StrEnum):
    INVALID = "invalid credentials"
    SERVICE_NOT_ENABLED = "service not enabled"
    ACCOUNT_DISABLED = "account disabled"
    THROTTLED = "throttled"
    UNAVAILABLE = "temporarily unavailable"   # shed: too many password checks queued
    INTERNAL = "internal error"


class SipFailure(StrEnum):
    UNKNOWN_USER = "unknown user"
    ACCOUNT_DISABLED = "account disabled"
    SERVICE_NOT_ENABLED = "service not enabled"
    NO_CREDENTIALS = "no SIP credentials (set a password)"
    INTERNAL = "internal error"


class AuthUnavailable(RuntimeError):
    """No auth service answered in time: a temporary failure, not a refusal."""


class _Message(BaseModel):
    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes):
        return cls.model_validate_json(data)


class AuthCheckRequest(_Message):
    """``{"user": "alice@acme.example", "password": "...", "service": "imap", "remote_addr": "198.51.100.7"}``"""

    model_config = ConfigDict(extra="ignore")

    user: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    service: str | None = Field(None, max_length=16, description="mail, imap, pop or sip; none: any")
    remote_addr: str | None = Field(None, max_length=64, description="the client's address (throttling)")
    familiar: bool = Field(False, description="the client's network logged in to this account before "
                           "(colony_edge.familiar): the account's failed-login lock does not hold it")


class AuthCheckReply(_Message):
    """``{"ok": true, "account": ..., "domain": ..., "services": [...], <limits>}`` or
    ``{"ok": false, "reason": "...", "retry_after": s}``"""

    ok: bool
    account: str | None = None
    domain: str | None = None
    services: list[str] | None = None
    quota_bytes: int | None = None
    max_message_bytes: int | None = None
    max_recipients_per_message: int | None = None
    sending_rate_per_hour: int | None = None
    reason: str | None = None
    retry_after: float | None = None

    def to_bytes(self) -> bytes:
        # A success always carries every limit (null: unlimited); a refusal only its reason.
        if self.ok:
            return self.model_dump_json(exclude={"reason", "retry_after"}).encode()
        return self.model_dump_json(include={"ok", "reason", "retry_after"}, exclude_none=True).encode()

    @classmethod
    def refused(cls, reason: AuthFailure | str, retry_after: float | None = None) -> AuthCheckReply:
        return cls(ok=False, reason=str(reason), retry_after=retry_after)

    @classmethod
    def granted(cls, account: str, domain: str, limits: dict) -> AuthCheckReply:
        """``limits``: what ``entitlements.effective`` returns."""
        return cls(ok=True, account=account, domain=domain, **limits)


class SipCredentialsRequest(_Message):
    """``{"user": "alice", "realm": "acme.example", "algorithm": "MD5"}``"""

    model_config = ConfigDict(extra="ignore")

    user: str = Field(max_length=320)
    realm: str = Field("", max_length=253)
    algorithm: Literal["MD5", "SHA-256"] = "MD5"

    @field_validator("algorithm", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class SipCredentialsReply(_Message):
    """``{"ok": true, "username": "alice", "realm": "acme.example", "algorithm": "MD5", "ha1": "<hex>"}``
    or ``{"ok": false, "reason": "..."}``"""

    ok: bool
    username: str | None = None
    realm: str | None = None
    algorithm: str | None = None
    ha1: str | None = None
    reason: str | None = None

    @classmethod
    def refused(cls, reason: SipFailure | str) -> SipCredentialsReply:
        return cls(ok=False, reason=str(reason))


async def request(nc: Client, subject: str, payload: bytes, timeout: float) -> bytes:
    """One request/reply; no answer in time (or no responder) is ``AuthUnavailable``."""
    try:
        # the caller's trace continues in the service (W3C trace context in the headers); the
        # service learns how long we wait, so it does not hash for a requester that gave up
        headers = inject_headers() | {TIMEOUT_HEADER: f"{timeout:g}"}
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except (NatsTimeoutError, NoRespondersError, TimeoutError) as exc:
        raise AuthUnavailable(f"no answer on {subject} within {timeout:g}s") from exc
    return msg.data


class AuthClient:
    """``await AuthClient(nc).check(user, password, service="imap", remote_addr=ip)``"""

    def __init__(self, nc: Client, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nc, self.timeout = nc, timeout

    async def check(self, user: str, password: str, service: str | None = None,
                    remote_addr: str | None = None, familiar: bool = False) -> AuthCheckReply:
        if len(user) > 320 or len(password) > 1024:
            return AuthCheckReply.refused(AuthFailure.INVALID)  # no account has such a name or password
        req = AuthCheckRequest(user=user, password=password, service=service, remote_addr=remote_addr,
                               familiar=familiar)
        reply = AuthCheckReply.from_bytes(await request(self.nc, names.AUTH_CHECK, req.to_bytes(), self.timeout))
        if not reply.ok and reply.reason == AuthFailure.UNAVAILABLE:
            # shed by an overloaded service: every edge already answers this as a timeout
            raise AuthUnavailable(f"{names.AUTH_CHECK}: {reply.reason}")
        return reply

    async def sip_credentials(self, user: str, realm: str, algorithm: str = "MD5") -> SipCredentialsReply:
        if len(user) > 320 or len(realm) > 253:
            return SipCredentialsReply.refused(SipFailure.UNKNOWN_USER)
        req = SipCredentialsRequest(user=user, realm=realm, algorithm=algorithm)
        return SipCredentialsReply.from_bytes(
            await request(self.nc, names.AUTH_SIP_CREDENTIALS, req.to_bytes(), self.timeout))
