"""imapclient's own live test suite (``imapclient.livetest``, which its authors run against
Gmail, Dovecot, Exchange and Fastmail) against a mail store's IMAP, on its ``imap-direct``
listener and through an edge (IMAPS, the store reached by the signed hand-off): capabilities, NAMESPACE,
folder create/rename/delete/subscribe with awkward names, APPEND, FETCH (ENVELOPE,
BODYSTRUCTURE, partial), SEARCH with a charset, SORT, THREAD, IDLE and NOOP seeing another
session's APPEND, flags, COPY/MOVE, EXPUNGE and UID EXPUNGE, UNSELECT, CONDSTORE modifiers and
ACL, once with UIDs and once with sequence numbers.

Every test of the suite must pass or be skipped by the suite itself (it skips what the server
does not advertise: XLIST, Gmail's extensions). ``EXCLUDED`` names the few that fail for reasons
outside the server (the client library, loopback's speed), each with its reason. Two checks are
adjusted rather than excluded, so the rest of their tests still runs: ENVELOPE is compared as
the dataclass imapclient now returns, and SUBSCRIBE to a missing mailbox may succeed (both below).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import ssl
import sys
import unittest
from pathlib import Path

import trustme
from imapclient import livetest
from imapclient.config import get_config_defaults
from prometheus_client import CollectorRegistry

from test_imap_mailstore import BOB, PASSWORD, imap, world  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from test_access_store_refusals import _Gate, _Tracker  # noqa: E402

from colony.contracts import handoff  # noqa: E402
from colony.contracts.auth import AuthClient  # noqa: E402
from colony.settings import Settings  # noqa: E402
from colony.tlsfiles import server_context  # noqa: E402
from colony_edge.access_proxy import AccessMetrics, AccessProxy, LoginThrottle, StoreFinder  # noqa: E402

EXCLUDED = {
    # TestSocketTimeout tests imapclient's socket timeouts, not the server: it expects a connect
    # with a 1 ms timeout, and a NOOP read with a 10 us one, to time out, which needs a network
    # slower than loopback (here both complete in time).
    "TestSocketTimeout.test_small_connection_timeout_fail":
        "a loopback connect completes within the suite's 1 ms connect timeout",
    "TestSocketTimeout.test_small_read_timeout_fail":
        "a loopback NOOP is answered within the suite's 10 us read timeout",
    # imapclient 4.1's IMAPClient.move() with use_uid=False calls imaplib's IMAP4.move, which
    # Python's imaplib does not have (AttributeError before anything is sent). MOVE by UID, the
    # same command on the server's side, runs in TestWithUIDs.
    "TestWithoutUIDs.test_move": "imapclient sends no MOVE without UIDs (imaplib has no IMAP4.move)",
    # test_getacl reads conf["username"] from the argparse.Namespace the suite's own config is,
    # a TypeError before it looks at the answer.  (Colony sends identifiers and rights as atoms
    # where they can be, which is what IMAPClient.getacl() reads.)  GETACL listing the owner
    # with every right is asserted in test_imap_acl.py.
    "TestWithUIDs.test_getacl": "the suite indexes its argparse.Namespace config (TypeError)",
    "TestWithoutUIDs.test_getacl": "the suite indexes its argparse.Namespace config (TypeError)",
}


class _SubscribeUnchecked:
    def is_exchange(self):
        """test_subscriptions expects SUBSCRIBE to a mailbox that does not exist to fail, except on
        Exchange. RFC 3501 §6.3.6 / RFC 9051 §6.3.7 only allow a server to refuse it ("MAY
        validate"); Colony accepts the name (LIST-EXTENDED then shows it ``\\NonExistent``), as
        Exchange does, so the suite's own exception for Exchange applies. is_exchange() decides
        nothing else in the suite."""
        return True


def _conf(host: str, port: int, tls: dict | None = None, alternates: dict | None = None) -> argparse.Namespace:
    """The suite's connection settings, as ``imapclient.config.parse_config_file`` builds them."""
    conf = argparse.Namespace(**{**get_config_defaults(), "host": host, "port": port, "ssl": False,
                    "username": BOB, "password": PASSWORD, "timeout": 30.0, **(tls or {})})
    # test_alternates connects with each alternate configuration (and expects the failures named).
    conf.alternates = {name: argparse.Namespace(**{**vars(conf), "expect_failure": None, **changes})
                       for name, changes in {"wrong-password": {"password": "not " + PASSWORD,
                                                                "expect_failure": "AUTHENTICATIONFAILED"},
                                             **(alternates or {})}.items()}
    return conf


class _EnvelopeAsData:
    """test_fetch compares the parsed ENVELOPE with ``assertSequenceEqual``, written when
    imapclient's ``Envelope`` was a namedtuple; it is a dataclass now, so that fails on every
    server. Compared here field by field as dataclasses (the same check the suite means)."""

    def assertSequenceEqual(self, first, second, msg=None, seq_type=None):
        if dataclasses.is_dataclass(first) and dataclasses.is_dataclass(second):
            self.maxDiff = None
            return self.assertEqual(first, second, msg)
        return super().assertSequenceEqual(first, second, msg, seq_type)


def _run_suite(conf: argparse.Namespace) -> tuple[unittest.TestResult, str, list[str]]:
    conf.namespace = livetest.probe_host(conf)  # as livetest.main(): the first personal namespace
    # (the suite's classes are made here, not at module level, where pytest would collect them)
    general = type("TestGeneral", (_SubscribeUnchecked, livetest.TestGeneral), {"conf": conf})
    classes = {"TestGeneral": general, "TestSocketTimeout": livetest.TestSocketTimeout}  # (excluded)
    for name, use_uid in (("TestWithUIDs", True), ("TestWithoutUIDs", False)):
        classes[name] = type(name, (_EnvelopeAsData, livetest.createUidTestClass(conf, use_uid)), {})
    suite, ran = unittest.TestSuite(), []
    for name, cls in classes.items():
        for test in unittest.TestLoader().loadTestsFromTestCase(cls):
            key = f"{name}.{test._testMethodName}"
            if key not in EXCLUDED:
                suite.addTest(test)
                ran.append(key)
    out = io.StringIO()
    result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
    return result, out.getvalue(), ran


def _assert_passed(result: unittest.TestResult, report: str, ran: list[str]) -> None:
    assert result.wasSuccessful(), report
    assert result.testsRun == len(ran) >= 50, report
    skipped = {test._testMethodName for test, _ in result.skipped}
    # What the suite may skip: only extensions Colony does not advertise. A skip of anything
    # else would mean a capability went missing or a test of ours stopped reaching the server.
    assert skipped <= {"test_xlist", "test_gmail_labels", "test_gmail_search", "test_uid_expunge"}, report


async def test_imapclient_livetest_passes_against_the_mail_store(imap):
    _world, host, port, _view, _ = imap
    _assert_passed(*await asyncio.to_thread(_run_suite, _conf(host, port)))


@contextlib.asynccontextmanager
async def _edge(world, secret: Path, tls):
    """An edge's IMAP and IMAPS listeners (``AccessProxy`` as the edge service builds it, with
    the real auth contract and the real store finder reading the node records and the lease)."""
    settings = Settings(access_plaintext_auth=False)
    proxy = AccessProxy(settings, handoff.load_secret(secret), AuthClient(world.nc), StoreFinder(world.nc, None),
                        LoginThrottle(settings, None, _Gate()), _Gate(), tls, _Tracker(),
                        AccessMetrics(CollectorRegistry()), "edge.test")
    servers = [await asyncio.start_server(lambda r, w, implicit=implicit: proxy.imap(r, w, implicit), "127.0.0.1", 0,
                                          ssl=tls if implicit else None)
               for implicit in (False, True)]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def _edge_imaps(world, secret: Path, tmp_path: Path):
    """An edge (``_edge``) with a certificate of a fresh CA for 127.0.0.1: yields its IMAPS
    port and a client context that trusts that CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with _edge(world, secret, server_context(tmp_path / "cert.pem", tmp_path / "key.pem")) as (_, imaps_port):
        yield imaps_port, client


async def test_imapclient_livetest_passes_through_the_edge(imap, tmp_path, monkeypatch):
    world, _host, _port, _view, secret = imap
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    # imapclient's STARTTLS takes the default context: let it trust this CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    async with _edge(world, secret, tls) as (imap_port, imaps_port):
        trust = {"ssl": True, "ssl_ca_file": str(tmp_path / "ca.pem")}
        conf = _conf("127.0.0.1", imaps_port, trust, alternates={
            "starttls": {"port": imap_port, "ssl": False, "starttls": True},
            # LOGIN in the clear is refused before it reaches the auth service (RFC 9051 §6.2.3).
            "plaintext": {"port": imap_port, "ssl": False, "starttls": False, "expect_failure": "PRIVACYREQUIRED"},
        })
        _assert_passed(*await asyncio.to_thread(_run_suite, conf))
