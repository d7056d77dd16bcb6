"""The MAIL stream's message: one accepted inbound message for the recipients of one domain.

An edge answers ``250`` to the end of DATA (or ``BDAT … LAST``) only after JetStream has
acknowledged one ``InboundMail`` per recipient domain of that transaction; a mailstore
consumes them from the work-queue stream ``MAIL`` and acknowledges only after the message is
on disk.  A message to ten recipients in three domains is therefore three stream messages
that share ``message_id`` and the body, each listing only its domain's recipients.

Subject: ``names.mail_subject(region, domain, partition)`` =
``colony.mail.<region>.<domain token>.<partition>``, where ``domain`` is the domain of the
*final* mailboxes (after aliases, domain aliases and forwarding were resolved by the edge)
and ``partition`` is ``names.mail_partition`` of the first of them: each mail store consumes
the partitions whose accounts it owns (``colony.cluster.ownership.place``).  The
unpartitioned ``colony.mail.<region>.<domain token>`` of older edges is consumed too.  Headers:

* ``Nats-Msg-Id: <message_id>/<domain token>`` -- an edge that retries a publish after a
  timeout is deduplicated within the stream's duplicate window;
* W3C trace context (``traceparent``), one trace per message from the edge's DATA to the
  mailstore's fsync (``colony.telemetry.inject_headers`` / ``extract_context``).

Payload: ``InboundMail.encode()``, the Colony event form, e.g.::

    {"type":"mail.inbound","v":1,"at":"2026-11-25T13:30:00Z",
     "message_id":"01JD…","domain":"example.com","mail_from":"alice@remote.test",
     "recipients":[{"mailbox":"bob@example.com","original":"Bob@Example.com",
                    "notify":["FAILURE"],"orcpt":"rfc822;Bob@Example.com"}],
     "body_type":"8BITMIME","smtputf8":false,"ret":"HDRS","envid":"abc",
     "size":1234,"edge_node":"edge-1","client_ip":"192.0.2.1","helo":"mx.remote.test",
     "tls":"TLSv1.3","body":"UmV0dXJuLVBhdGg6…","body_ref":null}

``at`` is when the edge received the message.  ``body`` holds the whole message (base64 in
JSON) *as it is to be stored*, with the ``Return-Path:`` and ``Received:`` header fields the
edge added, and CRLF line ends, dot-stuffing removed.  Bodies larger than
``Settings.mail_inline_max_bytes`` are not inline: ``body_ref`` names an object in the
``names.OBJECT_MAIL_BODIES`` object store (object name ``message_id``), shared by all the
domain messages of one transaction; the object store's max age (``Settings.mail_body_max_age``)
outlives any redelivery, so consumers never delete it themselves.

A mail store that sends a body too large to travel inline on to another region (a domain
moving or moved there) sends the same ``body_ref`` with ``region`` set to its own: the object
stays in that region's object store, and the receiving store fetches it from one of that
region's mail stores over the signed inner listener (``colony.contracts.account_export``,
protocol ``mailbody``), as a domain move's pull fetches bodies.  ``region`` is absent for a
body in the consumer's own region.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from colony.bus.tokens import to_token
from colony.events import Event, UnknownEvent, decode


# The largest message that travels to another region: object stores are region-local (``$O.>``
# does not cross the links between regions), so a job for another region carries its body
# inline, and base64 plus the envelope must fit MAIL's 8 MiB messages.  The edge refuses larger
# ones for a foreign-homed domain; a mail store sending on a moving domain's mail sends a larger
# one as a ``body_ref`` naming its own region (``MailBodyRef.region``), fetched from there.
CROSS_REGION_MAX_BYTES = 4 * 1024 * 1024


class MailRecipient(BaseModel):
    """One final mailbox and the DSN parameters (RFC 3461) its RCPT carried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: str                 # final account address, local@domain, normalised domain
    original: str                # the forward-path as the client gave it in RCPT TO
    notify: list[str] | None = None  # NEVER, or any of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None     # "addr-type;xtext-decoded address"


class MailBodyRef(BaseModel):
    """Where a body too large to travel inline lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str   # object store name (names.OBJECT_MAIL_BODIES)
    name: str     # object name: the message id
    size: int
    sha256: str   # hex digest of the stored bytes, so a consumer can verify what it read
    # The region whose object store holds it, when that is not the consumer's own (a mail
    # store sent the job on to another region); fetched over the inner listener.
    region: str | None = None

    @model_serializer(mode="wrap")
    def _own_region_absent(self, handler):
        # left out when None: stores of an older release (extra="forbid") read edges' jobs as before
        data = handler(self)
        if data.get("region") is None:
            data.pop("region", None)
        return data


class InboundMail(Event):
    """Accepted inbound mail for one recipient domain.  See the module docstring for the wire."""

    type: ClassVar[str] = "mail.inbound"
    version: ClassVar[int] = 1
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    message_id: str
    domain: str
    mail_from: str                       # reverse-path without <>; "" is the null sender
    recipients: list[MailRecipient]
    body_type: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    size: int                            # octets of the stored message (with added headers)
    edge_node: str
    client_ip: str = ""
    helo: str = ""
    tls: str | None = None               # TLS protocol version when the session used STARTTLS
    body: bytes | None = None
    body_ref: MailBodyRef | None = None
    # File into the recipient's mailbox with this special-use (RFC 6154), e.g. "\\Junk" for
    # mail the edge quarantined (DMARC p=quarantine); None or no such mailbox: INBOX.
    special_use: str | None = None

    @model_validator(mode="after")
    def _one_body(self) -> "InboundMail":
        if (self.body is None) == (self.body_ref is None):
            raise ValueError("exactly one of body and body_ref must be set")
        return self

    @classmethod
    def from_bytes(cls, data: bytes) -> "InboundMail":
        """Decode a MAIL stream payload (raises ``colony.events.UnknownEvent`` for anything else)."""
        event = decode(data)
        if not isinstance(event, cls):
            raise UnknownEvent(f"not an InboundMail: {type(event).__name__}")
        return event

    def msg_id(self) -> str:
        """The ``Nats-Msg-Id`` header value: unique per (message, domain)."""
        return f"{self.message_id}/{to_token(self.domain)}"

    def sent_on_msg_id(self, region: str, job: str = "") -> str:
        """The ``Nats-Msg-Id`` of this mail sent on by a mail store to ``region``'s stores
        (a domain moving or moved there).  Not ``msg_id()``: the edge's publish of the same
        mail is still in the duplicate window of the stream the store publishes into (its
        own region's MAIL, or the target's MAIL when the edge was the target's), so that id
        would be acknowledged as a duplicate and the mail dropped.  ``job`` names the job
        being sent on (``<region>.<its sequence in that region's MAIL>``): stable for the
        job, so a redelivered job sent on again is one message, while the same mail come
        back as another job -- bounced between two regions whose directories disagree about
        a move for a moment (eu sends on to us, us not yet seeing the move sends it back,
        eu sends it on again) -- is not taken for a duplicate of its first sending on and
        dropped.  The stores' delivery key dedupes the rest."""
        return f"{self.msg_id()}/on/{region}/{job}" if job else f"{self.msg_id()}/on/{region}"
