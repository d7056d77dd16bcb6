"""The OUTBOUND stream's message: mail waiting for delivery to one remote destination domain.

An edge that accepted a submission (or forwards, or bounces) publishes one ``OutboundMail``
per destination domain of the transaction and answers ``250`` only after JetStream
acknowledged all of them (recipients in the cluster go to ``MAIL`` instead, as inbound mail
does).  The edges' outbound runners consume ``OUTBOUND`` (work queue, durable consumer
``names.OUTBOUND_CONSUMER``) and deliver to the destination's MX.

Subject: ``names.outbound_subject(destination)`` = ``colony.outbound.<destination token>``.
Headers: ``Nats-Msg-Id: <message_id>/<destination token>[/<generation>]`` and the W3C trace
context (one trace from submission to the remote 250).

Payload: ``OutboundMail.encode()``, e.g.::

    {"type":"mail.outbound","v":1,"at":"2026-11-25T13:30:00Z",
     "message_id":"0193…","destination":"remote.test","mail_from":"alice@example.com",
     "recipients":[{"address":"bob@remote.test","notify":null,"orcpt":null}],
     "queued_at":"2026-11-25T13:30:00Z","generation":0,"attempts":0,
     "not_before":null,"delay_notified":false,
     "account":"alice@example.com","sign_domain":"example.com","sender_local":true,
     "body_type":null,"smtputf8":false,"ret":null,"envid":null,"size":1234,
     "edge_node":"edge-1","body":"UmVjZWl2ZWQ6…","body_ref":null}

``queued_at`` is when the message first entered the queue: expiry
(``Settings.outbound_max_age``) and the delay notice (``outbound_delay_warning``) count from
it, whatever happened since.  When a job's state changes without it being finished (some
recipients were delivered and others deferred, or the delay DSN went out) the runner
publishes the new state as ``generation + 1`` (its own ``Nats-Msg-Id``) and only then acks
the old one, so a crash between the two repeats the publish, which the duplicate window
absorbs.  ``body`` / ``body_ref`` as in ``colony.contracts.mail``: the message as it is to be
sent, without the DKIM signature (added at delivery, so a key rotation applies to queued mail).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from colony.bus.tokens import to_token
from colony.contracts.mail import MailBodyRef
from colony.events import Event, UnknownEvent, decode, utcnow


class OutboundRecipient(BaseModel):
    """One remote forward-path and the DSN parameters (RFC 3461) its RCPT carried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str
    notify: list[str] | None = None   # NEVER, or any of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None          # "addr-type;address"


class OutboundMail(Event):
    """Mail for one remote destination domain.  See the module docstring for the wire."""

    type: ClassVar[str] = "mail.outbound"
    version: ClassVar[int] = 1
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    message_id: str
    destination: str                     # the recipients' domain, lower case
    mail_from: str                       # reverse-path; "" for DSNs (never bounced)
    recipients: list[OutboundRecipient]
    queued_at: datetime
    generation: int = 0
    attempts: int = 0                    # attempts made by earlier generations
    not_before: datetime | None = None   # a requeued generation waits for its back-off
    delay_notified: bool = False
    account: str = ""                    # the authenticated submitter ("" for forwards and DSNs)
    sign_domain: str = ""                # DKIM d= (the From: domain); "" = unsigned
    sender_local: bool = True            # a DSN goes to MAIL (True) or OUTBOUND (False)
    body_type: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    size: int
    edge_node: str
    body: bytes | None = None
    body_ref: MailBodyRef | None = None

    @model_validator(mode="after")
    def _valid(self) -> "OutboundMail":
        if (self.body is None) == (self.body_ref is None):
            raise ValueError("exactly one of body and body_ref must be set")
        if not self.recipients:
            raise ValueError("an outbound message needs at least one recipient")
        return self

    @classmethod
    def new(cls, **fields) -> "OutboundMail":
        now = utcnow()
        return cls(at=now, queued_at=fields.pop("queued_at", now), **fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> "OutboundMail":
        """Decode an OUTBOUND payload (raises ``colony.events.UnknownEvent`` for anything else)."""
        event = decode(data)
        if not isinstance(event, cls):
            raise UnknownEvent(f"not an OutboundMail: {type(event).__name__}")
        return event

    def msg_id(self) -> str:
        """The ``Nats-Msg-Id`` header value: unique per (message, destination, generation)."""
        base = f"{self.message_id}/{to_token(self.destination)}"
        return base if self.generation == 0 else f"{base}/{self.generation}"

    def next_generation(self, **changes) -> "OutboundMail":
        return self.model_copy(update={"generation": self.generation + 1, "at": utcnow(), **changes})
