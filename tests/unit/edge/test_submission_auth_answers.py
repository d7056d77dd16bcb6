"""What AUTH on the submission port answers for each kind of auth service answer: a service
that failed or shed the check is a temporary failure (454 4.7.0, RFC 4954), never 535."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from colony.contracts.auth import AuthCheckReply, AuthClient, AuthFailure
from colony.protocols.smtp import events as E, replies as R
from colony.settings import Settings
from colony_edge.smtp_policy import SmtpSession
from colony_edge.submission import AUTH_THROTTLED, AUTH_UNAVAILABLE, SubmissionMetrics, SubmissionPolicy


class FakeBus:
    """Answers every request with one fixed reply body, as the auth service would."""

    def __init__(self, reply: AuthCheckReply) -> None:
        self.reply, self.headers = reply, None

    async def request(self, subject, payload, timeout, headers=None):
        self.headers = headers
        return SimpleNamespace(data=self.reply.to_bytes())


def policy_with(bus: FakeBus) -> SubmissionPolicy:
    return SubmissionPolicy(None, auth=AuthClient(bus, timeout=3), counters=None, js=None, settings=Settings(),
                            metrics=SubmissionMetrics(CollectorRegistry()), node_id="edge-1")


@pytest.mark.parametrize("reason, expected", [
    (AuthFailure.UNAVAILABLE, AUTH_UNAVAILABLE),   # shed under load
    (AuthFailure.INTERNAL, AUTH_UNAVAILABLE),
    (AuthFailure.THROTTLED, AUTH_THROTTLED),
    (AuthFailure.INVALID, R.AUTH_FAILED),
])
async def test_auth_answers(reason, expected):
    bus = FakeBus(AuthCheckReply.refused(reason))
    verdict = await policy_with(bus).auth(SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=587),
                                          E.Auth(mechanism="PLAIN", username="bob@example.com", password="x"))
    assert not verdict.accept and verdict.reply == expected
    assert bus.headers["Colony-Timeout"] == "3"   # the service learns how long the edge waits


class CountingBus(FakeBus):
    def __init__(self, reply: AuthCheckReply) -> None:
        super().__init__(reply)
        self.asked = 0

    async def request(self, subject, payload, timeout, headers=None):
        self.asked += 1
        return await super().request(subject, payload, timeout, headers)


async def test_a_repeated_auth_is_answered_by_the_edges_login_cache_until_the_account_changes():
    from colony.bus import names
    from colony_edge.login_cache import LoginCache

    bus = CountingBus(AuthCheckReply.granted("bob@example.com", "example.com", {}))
    cache = LoginCache(100, ttl=3600)
    policy = SubmissionPolicy(None, auth=AuthClient(bus, timeout=3), counters=None, js=None, settings=Settings(),
                              metrics=SubmissionMetrics(CollectorRegistry()), node_id="edge-1", login_cache=cache)

    async def auth(password: str):
        session = SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=587)
        verdict = await policy.auth(session, E.Auth(mechanism="PLAIN", username="bob@example.com", password=password))
        return verdict.accept, session.notes.get("account")

    assert await auth("right") == (True, "bob@example.com")
    assert await auth("right") == (True, "bob@example.com")
    assert bus.asked == 1 and cache.hits == 1
    await auth("other")                      # another password is never answered from the cache
    assert bus.asked == 2
    # IMAP's entry for the same user and password is not submission's (the service is in the key)
    assert cache.get(cache.key("imap", "bob@example.com", "right")) is None
    cache.on_directory_change(names.AGG_ADDRESS, "bob@example.com")   # e.g. a password change
    await auth("right")
    assert bus.asked == 3


async def test_a_successful_auth_gives_the_connection_back_to_its_addresss_rate_and_a_failed_one_does_not():
    """As on IMAP and POP3 (EdgeGate.refund_connection): the connection rate is for
    connections nobody logs in on; an office's senders behind one NAT address open one per
    message and would turn each other away on a busy morning."""
    refunded: list[str] = []

    async def refund(ip: str) -> None:
        refunded.append(ip)

    for reply, expected in ((AuthCheckReply.refused(AuthFailure.INVALID), []),
                            (AuthCheckReply.granted("bob@example.com", "example.com", {}), ["192.0.2.1"])):
        refunded.clear()
        policy = SubmissionPolicy(None, auth=AuthClient(FakeBus(reply), timeout=3), counters=None, js=None,
                                  settings=Settings(), metrics=SubmissionMetrics(CollectorRegistry()),
                                  node_id="edge-1", refund=refund)
        session = SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=587)
        await policy.auth(session, E.Auth(mechanism="PLAIN", username="bob@example.com", password="x"))
        assert refunded == expected
