"""The edge's publish of accepted mail: its attempts share mail_publish_timeout (no sockets)."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import CollectorRegistry

from colony.contracts.mail import InboundMail, MailRecipient
from colony.settings import Settings
from colony_edge.acceptance import AcceptanceFailed, MailAcceptor, SmtpMetrics


class Js:
    """JetStream whose first ``lost`` publishes are never answered (they went down with a
    nats-server that died): each times out after the timeout it was given."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.calls: list[tuple[float, str]] = []

    async def publish(self, subject, payload, timeout, headers):
        self.calls.append((timeout, headers["Nats-Msg-Id"]))
        if len(self.calls) <= self.lost:
            raise NatsTimeoutError
        return object()


def _mail() -> InboundMail:
    body = b"Subject: x\r\n\r\nhello\r\n"
    return InboundMail(message_id="m1", domain="example.com", mail_from="s@remote.test",
                       recipients=[MailRecipient(mailbox="a@example.com", original="a@example.com")],
                       size=len(body), edge_node="edge-1", body=body)


def _acceptor(js: Js) -> MailAcceptor:
    return MailAcceptor(js, Settings(mail_publish_timeout=30), "edge-1", "mx.test", SmtpMetrics(CollectorRegistry()))


def test_a_publish_lost_with_the_bus_is_sent_again_after_a_sixth_of_the_timeout():
    js = Js(lost=1)
    asyncio.run(_acceptor(js)._publish("colony.mail.local.example_2ecom.0", _mail(), {}))
    assert [t for t, _ in js.calls] == [5.0, 10.0]
    assert len({msg_id for _, msg_id in js.calls}) == 1   # the same Nats-Msg-Id: one message in MAIL


def test_all_attempts_together_wait_mail_publish_timeout_then_451():
    js = Js(lost=3)
    with pytest.raises(AcceptanceFailed):
        asyncio.run(_acceptor(js)._publish("colony.mail.local.example_2ecom.0", _mail(), {}))
    assert sum(t for t, _ in js.calls) == pytest.approx(30.0)
