"""The MX's recipient policy and the headers and grouping of durable acceptance, without a bus."""

from __future__ import annotations

import asyncio
import json
import time

from colony.bus import names
from colony.contracts.cache import DirectoryIndex
from colony.contracts.recipients import resolve
from colony.protocols.smtp import events as E
from colony.settings import Settings
from colony_edge.acceptance import MailAcceptor, fold
from colony_edge.recipients import DIRECTORY_NOT_READY, RecipientPolicy
from colony_edge.smtp_policy import ACCEPT, BasePolicy, IncomingMessage, PolicyChain, SmtpSession, Verdict, refuse
from colony.protocols.smtp import replies as R


class Directory(DirectoryIndex):
    def __init__(self, loaded: bool = True) -> None:
        super().__init__()
        self.loaded = asyncio.Event()
        if loaded:
            self.loaded.set()

    def put(self, kind: str, name: str, value: dict) -> None:
        self.apply(names.directory_key(kind, name), json.dumps(value).encode())

    def resolve(self, recipient):
        return resolve(self, recipient)

    def limits_of(self, address):
        from colony.contracts.recipients import account_limits
        return account_limits(self, address)


def directory() -> Directory:
    d = Directory()
    d.put("domain", "a.test", {"kind": "domain", "name": "a.test", "home_region": "eu", "cos": "tiny"})
    d.put("domain", "b.test", {"kind": "domain", "name": "b.test"})
    for addr in ("x@a.test", "y@a.test", "z@b.test"):
        d.put("address", addr, {"kind": "account", "address": addr, "domain": addr.split("@")[1], "name": addr[0]})
    d.put("address", "all@b.test", {"kind": "alias", "address": "all@b.test", "domain": "b.test", "name": "all",
                                    "targets": ["x@a.test", "z@b.test"]})
    d.put("cos", "tiny", {"kind": "cos", "name": "tiny", "limits": {"max_message_bytes": 1000,
                                                                     "max_recipients_per_message": 2}})
    return d


def session() -> SmtpSession:
    s = SmtpSession(id="1", peer_ip="192.0.2.1", peer_port=1234, local_port=25, helo="client.test", extended=True)
    s.mail_from = E.MailFrom("alice@remote.test")
    return s


async def test_resolves_and_records_mailboxes_and_limits():
    policy, s = RecipientPolicy(directory()), session()
    assert await policy.rcpt_to(s, E.RcptTo("all@b.test")) == ACCEPT
    assert [m.address for m in s.recipients[0].mailboxes] == ["x@a.test", "z@b.test"]
    assert s.max_message_size == 1000
    verdict = await policy.rcpt_to(s, E.RcptTo("nobody@b.test"))
    assert not verdict.accept and (verdict.reply.code, verdict.reply.status) == (550, "5.1.1")
    assert verdict.reason == "unknown_user"
    assert (await policy.rcpt_to(s, E.RcptTo("y@a.test"))).accept
    verdict = await policy.rcpt_to(s, E.RcptTo("y@a.test"))   # class "tiny": 2 recipients
    assert verdict.reply == R.TOO_MANY_RECIPIENTS


async def test_declared_size_over_class_limit():
    policy, s = RecipientPolicy(directory()), session()
    s.mail_from = E.MailFrom("alice@remote.test", size=5000)
    assert (await policy.rcpt_to(s, E.RcptTo("x@a.test"))).reply == R.MESSAGE_TOO_BIG
    assert (await policy.rcpt_to(s, E.RcptTo("z@b.test"))).accept


async def test_not_loaded_is_temporary():
    assert (await RecipientPolicy(Directory(loaded=False)).rcpt_to(session(), E.RcptTo("x@a.test"))).reply \
        == DIRECTORY_NOT_READY


async def test_chain_first_refusal_wins():
    class No(BasePolicy):
        async def rcpt_to(self, session, rcpt):
            return refuse(R.TEMPORARY_FAILURE)
    s = session()
    assert (await PolicyChain([No(), RecipientPolicy(directory())]).rcpt_to(s, E.RcptTo("x@a.test"))).reply \
        == R.TEMPORARY_FAILURE
    assert s.recipients == []
    assert await PolicyChain([BasePolicy()]).connect(s) == Verdict(True)


async def test_grouping_by_region_and_domain_dedupes_mailboxes(tmp_path):
    policy, s = RecipientPolicy(directory()), session()
    for rcpt in ("all@b.test", "x@a.test", "z@b.test"):
        assert (await policy.rcpt_to(s, E.RcptTo(rcpt, notify=("FAILURE",)))).accept
    acceptor = MailAcceptor(None, Settings(region="home"), "edge-1", "mx.test", None)
    groups = acceptor._group(s)
    assert {k: [r.mailbox for r in v] for k, v in groups.items()} == {
        ("eu", "a.test"): ["x@a.test"], ("home", "b.test"): ["z@b.test"]}
    assert groups[("eu", "a.test")][0].original == "all@b.test"
    assert groups[("eu", "a.test")][0].notify == ["FAILURE"]


def test_received_and_return_path(tmp_path):
    s = session()
    s.tls, s.tls_cipher = "TLSv1.3", "TLS_AES_256_GCM_SHA384"
    from colony_edge.smtp_policy import AcceptedRecipient
    s.recipients = [AcceptedRecipient(E.RcptTo("x@a.test"), ())]
    message = IncomingMessage(size=0, spool=tmp_path / "m")
    message.add_header("Authentication-Results", "mx.test; spf=pass")
    head = MailAcceptor(None, Settings(), "edge-1", "mx.test", None)._head(s, message, "abc123", "0af7651916cd43dd8448eb211c80319c")
    text = head.decode()
    assert text.startswith("Return-Path: <alice@remote.test>\r\nReceived: from client.test ([192.0.2.1])")
    unfolded = text.replace("\r\n\t", " ")
    assert "by mx.test (Colony) with ESMTPS id abc123 (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)" in unfolded
    assert "for <x@a.test> (trace 0af7651916cd43dd8448eb211c80319c);" in unfolded
    assert "Authentication-Results: mx.test; spf=pass\r\n" in text
    assert all(len(line) <= 78 for line in text.split("\r\n"))


def test_received_says_when_the_client_logged_in(tmp_path):
    """RFC 3848 §2 / RFC 6531 §3.7.3: a submission (AUTH succeeded) is ESMTPSA or UTF8SMTPSA,
    not the ESMTPS of a stranger's mail."""
    acceptor = MailAcceptor(None, Settings(), "edge-1", "mx.test", None)
    s = session()
    s.tls, s.tls_cipher, s.authenticated = "TLSv1.3", "TLS_AES_256_GCM_SHA384", True
    message = IncomingMessage(size=0, spool=tmp_path / "m")
    assert " with ESMTPSA id abc " in acceptor._head(s, message, "abc", None).decode().replace("\r\n\t", " ")
    s.mail_from = E.MailFrom("alice@remote.test", smtputf8=True)
    assert " with UTF8SMTPSA id abc " in acceptor._head(s, message, "abc", None).decode().replace("\r\n\t", " ")


def test_fold_keeps_long_words_whole():
    assert fold("X", "a" * 100) == b"X: " + b"a" * 100 + b"\r\n"


class FakeJs:
    """Records publishes; the first ``timeouts`` attempts time out like an unanswered publish."""

    def __init__(self, timeouts: int = 0, error: Exception | None = None) -> None:
        self.published, self.timeouts, self.error = [], timeouts, error

    async def publish(self, subject, payload, timeout=None, headers=None):
        from nats.errors import TimeoutError as NatsTimeoutError
        self.published.append((subject, payload, dict(headers)))
        if self.error:
            raise self.error
        if self.timeouts:
            self.timeouts -= 1
            raise NatsTimeoutError


async def _accept(tmp_path, js, tracer=None):
    from prometheus_client import CollectorRegistry
    from colony_edge.acceptance import SmtpMetrics
    policy, s = RecipientPolicy(directory()), session()
    for rcpt in ("x@a.test", "z@b.test"):
        assert (await policy.rcpt_to(s, E.RcptTo(rcpt))).accept
    spool = tmp_path / "m.spool"
    spool.write_bytes(b"Subject: t\r\n\r\nhi\r\n")
    acceptor = MailAcceptor(js, Settings(), "edge-1", "mx.test", SmtpMetrics(CollectorRegistry()), tracer)
    return await acceptor.accept(s, IncomingMessage(size=spool.stat().st_size, spool=spool))


async def test_one_trace_per_message_and_one_publish_per_domain(tmp_path):
    from opentelemetry.sdk.trace import TracerProvider
    from colony.contracts.mail import InboundMail
    js = FakeJs()
    message_id = await _accept(tmp_path, js, TracerProvider().get_tracer("test"))
    # one per domain, in the partition of its (first) final mailbox
    assert sorted(p[0] for p in js.published) == [names.mail_subject("eu", "a.test", names.mail_partition("x@a.test")),
                                                  names.mail_subject("local", "b.test", names.mail_partition("z@b.test"))]
    traces = {p[2]["traceparent"].split("-")[1] for p in js.published}
    assert len(traces) == 1
    mails = [InboundMail.from_bytes(p[1]) for p in js.published]
    assert {m.message_id for m in mails} == {message_id}
    assert {p[2]["Nats-Msg-Id"] for p in js.published} == {m.msg_id() for m in mails}
    assert f"(trace {traces.pop()})" in mails[0].body.decode().replace("\r\n\t", " ")


async def test_timed_out_publish_is_retried_with_the_same_msg_id(tmp_path):
    js = FakeJs(timeouts=1)
    await _accept(tmp_path, js)
    ids = [p[2]["Nats-Msg-Id"] for p in js.published]
    assert len(ids) == 3 and len(set(ids)) == 2


async def test_a_refused_publish_fails_the_acceptance(tmp_path):
    import pytest
    from colony_edge.acceptance import AcceptanceFailed
    with pytest.raises(AcceptanceFailed):
        await _accept(tmp_path, FakeJs(error=RuntimeError("no stream")))


async def test_postmaster_without_domain_and_for_every_hosted_domain():
    # RFC 5321 §4.5.1: <Postmaster> must be accepted, and postmaster@ of every hosted domain.
    policy, s = RecipientPolicy(directory(), postmaster="z@b.test"), session()
    assert await policy.rcpt_to(s, E.RcptTo("Postmaster")) == ACCEPT
    assert await policy.rcpt_to(s, E.RcptTo("postmaster@a.test")) == ACCEPT
    assert [r.mailboxes[0].address for r in s.recipients] == ["z@b.test", "z@b.test"]
    refused = await RecipientPolicy(directory()).rcpt_to(session(), E.RcptTo("postmaster"))
    assert not refused.accept and refused.reply.code == 550 and "POSTMASTER" in refused.reply.text
    # Not a hosted domain: postmaster there is not ours to take.
    assert not (await policy.rcpt_to(session(), E.RcptTo("postmaster@elsewhere.test"))).accept


class HomeJs(FakeJs):
    """The home region across the link: its publishes time out ``home_timeouts`` times."""

    def __init__(self, home_timeouts: int = 0) -> None:
        super().__init__()
        self.home_timeouts = home_timeouts
        self.waiting_here: dict[str, int] = {}  # what STREAM.INFO of the local MAIL reports, by subject
        self.info_asked: list[str | None] = []

    async def stream_info(self, name, subjects_filter=None):
        from types import SimpleNamespace
        self.info_asked.append(subjects_filter)
        return SimpleNamespace(state=SimpleNamespace(subjects=dict(self.waiting_here)))

    async def publish(self, subject, payload, timeout=None, headers=None):
        from nats.errors import TimeoutError as NatsTimeoutError
        self.published.append((subject, payload, dict(headers)))
        if subject.startswith("colony.mailhome.") and self.home_timeouts:
            self.home_timeouts -= 1
            raise NatsTimeoutError


async def _accept_in_us(tmp_path, acceptor, rcpt="x@a.test"):
    policy, s = RecipientPolicy(directory()), session()
    assert (await policy.rcpt_to(s, E.RcptTo(rcpt))).accept
    spool = tmp_path / "m.spool"
    spool.write_bytes(b"Subject: t\r\n\r\nhi\r\n")
    return await acceptor.accept(s, IncomingMessage(size=spool.stat().st_size, spool=spool))


def _us_acceptor(js):
    from prometheus_client import CollectorRegistry
    from colony_edge.acceptance import SmtpMetrics
    return MailAcceptor(js, Settings(region="us", regions="eu,us", mail_home_ack_timeout=0.5), "edge-1", "mx.test",
                        SmtpMetrics(CollectorRegistry()))


async def test_mail_for_another_region_goes_into_its_mail_across_the_link(tmp_path):
    js = HomeJs()
    acceptor = _us_acceptor(js)
    await _accept_in_us(tmp_path, acceptor)            # a.test is homed in eu
    await _accept_in_us(tmp_path, acceptor, "z@b.test")  # b.test has no home: stored here
    assert [p[0] for p in js.published] == [names.mail_home_subject("eu", "a.test", names.mail_partition("x@a.test")),
                                            names.mail_subject("us", "b.test", names.mail_partition("z@b.test"))]


async def test_an_unanswered_home_region_gets_the_mail_through_the_local_mail_then_is_skipped(tmp_path):
    js = HomeJs(home_timeouts=1)
    acceptor = _us_acceptor(js)
    await _accept_in_us(tmp_path, acceptor)
    home, local = js.published
    partition = names.mail_partition("x@a.test")
    assert (home[0], local[0]) == (names.mail_home_subject("eu", "a.test", partition),
                                   names.mail_subject("eu", "a.test", partition))
    assert home[1] == local[1] and home[2]["Nats-Msg-Id"] == local[2]["Nats-Msg-Id"]  # one copy in the end
    js.published.clear()
    await _accept_in_us(tmp_path, acceptor)    # the breaker: no second wait
    assert [p[0] for p in js.published] == [names.mail_subject("eu", "a.test", partition)]
    metric = acceptor.metrics.home_publishes
    assert [metric.labels(o)._value.get() for o in ("home", "fallback", "local")] == [0, 1, 1]


async def test_the_probe_waits_while_mail_stored_here_for_the_home_region_is_not_yet_taken(tmp_path):
    """An edge's mail reaches the home region in the order it took it: after a fallback, the
    message that would try the link again stays local while the local MAIL still holds mail
    for that region (the source has not taken it), and crosses once it holds none."""
    js = HomeJs(home_timeouts=1)
    acceptor = _us_acceptor(js)
    partition = names.mail_partition("x@a.test")
    local, home = names.mail_subject("eu", "a.test", partition), names.mail_home_subject("eu", "a.test", partition)
    await _accept_in_us(tmp_path, acceptor)                        # times out: stored here
    assert js.info_asked == []                                     # no probe yet, nothing asked
    acceptor.home_links.failed("eu", time.monotonic() - acceptor.home_links.pause)  # the pause is over
    js.waiting_here = {local: 1}                                   # the source has not taken it yet
    js.published.clear()
    await _accept_in_us(tmp_path, acceptor)
    assert [p[0] for p in js.published] == [local]                 # kept behind it, here
    assert js.info_asked == [names.mail_region_filter("eu")]
    assert acceptor.home_links.is_open("eu")
    acceptor.home_links.failed("eu", time.monotonic() - acceptor.home_links.pause)
    js.waiting_here = {}
    js.published.clear()
    await _accept_in_us(tmp_path, acceptor)
    assert [p[0] for p in js.published] == [home]                  # none waiting: across again
    assert not acceptor.home_links.is_open("eu")


async def test_a_message_stored_here_while_the_probe_crosses_is_not_overtaken(tmp_path):
    """The probe's answer does not send the next messages across while one stored here during
    the probe still waits for the home region's source."""
    partition = names.mail_partition("x@a.test")
    local, home = names.mail_subject("eu", "a.test", partition), names.mail_home_subject("eu", "a.test", partition)

    class SlowHomeJs(HomeJs):
        def __init__(self) -> None:
            super().__init__()
            self.crossing = asyncio.Event()
            self.answer = asyncio.Event()

        async def publish(self, subject, payload, timeout=None, headers=None):
            await super().publish(subject, payload, timeout, headers)
            if subject == home and not self.answer.is_set():
                self.crossing.set()
                await self.answer.wait()       # the probe is out across the link
            elif subject == local:
                self.waiting_here[local] = self.waiting_here.get(local, 0) + 1  # until eu's source takes it

    js = SlowHomeJs()
    acceptor = _us_acceptor(js)
    acceptor.home_links.failed("eu", time.monotonic() - acceptor.home_links.pause)  # the pause is over
    for name in ("p", "l", "n"):
        (tmp_path / name).mkdir()
    probe = asyncio.ensure_future(_accept_in_us(tmp_path / "p", acceptor))
    await asyncio.wait_for(js.crossing.wait(), 5)
    await _accept_in_us(tmp_path / "l", acceptor)      # stored here while the probe is out
    js.answer.set()
    await probe
    js.published.clear()
    await _accept_in_us(tmp_path / "n", acceptor)      # after the probe's answer
    assert [p[0] for p in js.published] == [local], "it would reach eu ahead of the one still held here"
