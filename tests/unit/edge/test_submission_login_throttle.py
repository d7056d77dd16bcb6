"""Password guessing on the submission ports counts in the edge's login-failure throttle, the
one IMAP and POP3 use (per client address and per account, across all edges): past it AUTH is
454 4.7.0 without a check, for the right password too; a client familiar to the account still
gets in; and failures over IMAP/POP3 lock submission as well (one budget per account)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from colony.contracts.auth import AuthCheckReply, AuthClient, AuthFailure, AuthCheckRequest
from colony.protocols.smtp import events as E, replies as R
from colony.settings import Settings
from colony_edge.access_proxy import LoginThrottle
from colony_edge.smtp_policy import SmtpSession
from colony_edge.submission import AUTH_THROTTLED, SubmissionMetrics, SubmissionPolicy

from test_access_throttle import FakeCounters

ACCOUNT, RIGHT = "alice@acme.example", "the right one"
STRANGER, OWNER = "198.51.100.7", "203.0.113.5"
SETTINGS = Settings(access_login_failures_per_ip=1000, access_login_failures_per_account=10)


class NoneTrusted:
    def trusted(self, ip: str) -> bool:
        return False


class Familiar:
    def __init__(self) -> None:
        self.known_pairs: set[tuple[str, str]] = set()

    async def known(self, account: str, ip: str) -> bool:
        return (account.lower(), ip) in self.known_pairs

    async def remember(self, account: str, ip: str) -> None:
        self.known_pairs.add((account.lower(), ip))


class PasswordService:
    """The auth service: one account, no lock of its own (the edge's is under test)."""

    def __init__(self) -> None:
        self.asked = 0

    async def request(self, subject, payload, timeout, headers=None):
        self.asked += 1
        request = AuthCheckRequest.from_bytes(payload)
        reply = (AuthCheckReply.granted(ACCOUNT, "acme.example", {}) if request.password == RIGHT
                 else AuthCheckReply.refused(AuthFailure.INVALID))
        return SimpleNamespace(data=reply.to_bytes())


def submission() -> tuple[SubmissionPolicy, LoginThrottle, PasswordService]:
    familiar, service = Familiar(), PasswordService()
    throttle = LoginThrottle(SETTINGS, FakeCounters(), NoneTrusted(), familiar)
    policy = SubmissionPolicy(None, auth=AuthClient(service, timeout=3), counters=None, js=None, settings=SETTINGS,
                              metrics=SubmissionMetrics(CollectorRegistry()), node_id="edge-1",
                              familiar=familiar, throttle=throttle)
    return policy, throttle, service


async def auth(policy: SubmissionPolicy, ip: str, password: str):
    """R.AUTH_OK when AUTH succeeded, else the refusal."""
    session = SmtpSession(id="s1", peer_ip=ip, peer_port=1, local_port=465)
    verdict = await policy.auth(session, E.Auth(mechanism="PLAIN", username=ACCOUNT, password=password))
    return R.AUTH_OK if verdict.accept else verdict.reply


async def test_guessing_locks_the_account_for_strangers_and_the_owner_still_gets_in():
    policy, _, service = submission()
    assert await auth(policy, OWNER, RIGHT) == R.AUTH_OK            # the owner's client, once: familiar now
    for i in range(10):
        assert await auth(policy, STRANGER, f"guess {i}") == R.AUTH_FAILED
    asked = service.asked
    assert await auth(policy, STRANGER, RIGHT) == AUTH_THROTTLED    # the right password, too late
    assert service.asked == asked                                    # refused without a check
    assert await auth(policy, "192.0.2.99", RIGHT) == AUTH_THROTTLED  # from anywhere a stranger is
    assert await auth(policy, OWNER, RIGHT) == R.AUTH_OK


async def test_failures_over_imap_and_pop3_lock_submission_too():
    policy, throttle, _ = submission()
    for _ in range(10):
        await throttle.failed(STRANGER, ACCOUNT)    # what the access proxy records for a wrong IMAP/POP3 login
    assert await auth(policy, STRANGER, RIGHT) == AUTH_THROTTLED
