"""A mail store's answers to a domain move's questions without a bus (``colony_mailstore.moves``):
what it refuses (another region's question, a move the directory does not know, a pull after
the flip, a remove before it, an older controller epoch), and the source's side on storage:
the accounts held counted, the domain's copy removed once and idempotently."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from colony.bus import names
from colony.contracts import move_requests as mr
from colony.contracts.directory import DomainEntry, DomainMoveEntry
from colony.storage.layout import StorageLayout, account_paths
from colony_mailstore.moves import MoveServer, Refused

DOMAIN = "acme.example"
ASKED = {"domain": DOMAIN, "move_id": "m1", "source": "eu", "target": "us", "epoch": 5}


class FakeDirectory:
    def __init__(self) -> None:
        self.entry: DomainEntry | None = None

    async def domain(self, domain: str):
        return self.entry if self.entry is not None and domain == self.entry.name else None

    async def layout(self, domain: str) -> StorageLayout:
        return StorageLayout()


class FakeOwnership:
    def __init__(self) -> None:
        self.leases: dict[str, object] = {}


class FakeAccounts:
    def __init__(self, root: Path) -> None:
        self.root, self.directory, self.ownership = root, FakeDirectory(), FakeOwnership()
        self.open: dict[str, object] = {}
        self.closed: list[str] = []

    async def close(self, address: str, reason: str, release: bool = True) -> None:
        self.open.pop(address, None)
        self.ownership.leases.pop(address, None)
        self.closed.append(address)


class FakeMembers:
    ready: tuple[str, ...] = ("mailstore-1",)


class Msg:
    def __init__(self, verb: str, body: dict) -> None:
        self.subject = names.domain_move_subject("eu", verb)
        self.data = json.dumps(body).encode()
        self.headers = None
        self.answer: bytes | None = None

    async def respond(self, data: bytes) -> None:
        self.answer = data


def at(phase: str, home: str = "eu") -> DomainEntry:
    return DomainEntry(name=DOMAIN, home_region=home,
                       move=DomainMoveEntry(move_id="m1", source="eu", target="us", phase=phase))


@pytest.fixture
def store(tmp_path):
    accounts = FakeAccounts(tmp_path)
    server = MoveServer(nc=None, node_id="mailstore-1", region="eu", accounts=accounts, delivery=None,
                        members=FakeMembers(), secret=b"s" * 32, sessions_of_domain=lambda d: 2 if d == DOMAIN else 0)
    return server, accounts


def make_account(root: Path, name: str) -> Path:
    paths = account_paths(root, DOMAIN, name, StorageLayout())
    (paths.mail_dir / "bodies").mkdir(parents=True)
    (paths.mail_dir / "bodies" / "b1").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    return paths.account_dir


async def ask(server: MoveServer, verb: str, body: dict, kind):
    msg = Msg(verb, body)
    await server._answer(msg, peer=False)
    return mr.decode_reply(msg.answer, kind)


async def test_questions_for_another_region_or_an_unknown_move_are_refused(store):
    server, accounts = store
    with pytest.raises(mr.MoveRequestError, match="asked of region us"):
        await ask(server, names.MOVE_PULL, {**ASKED, "address": f"bob@{DOMAIN}", "copy_pass": 1,
                                            "from_position": 0}, mr.PullReply)
    with pytest.raises(mr.MoveRequestError, match="no move m1"):
        await ask(server, names.MOVE_SESSIONS, ASKED, mr.SessionsReply)
    accounts.directory.entry = at("copying")
    with pytest.raises(mr.MoveRequestError, match="bad sessions request"):
        await ask(server, names.MOVE_SESSIONS, {**ASKED, "epoch": -1}, mr.SessionsReply)


async def test_sessions_count_this_stores_sessions_and_the_accounts_on_storage(store, tmp_path):
    server, accounts = store
    accounts.directory.entry = at("sealing")
    make_account(tmp_path, "amy")
    make_account(tmp_path, "ben")
    reply = await ask(server, names.MOVE_SESSIONS, ASKED, mr.SessionsReply)
    assert (reply.sessions, reply.accounts_held) == (2, 2)


async def test_an_older_controller_epoch_is_refused_once_a_newer_one_asked(store):
    server, accounts = store
    accounts.directory.entry = at("sealing")
    await ask(server, names.MOVE_SESSIONS, {**ASKED, "epoch": 6}, mr.SessionsReply)
    with pytest.raises(mr.MoveRequestError, match="epoch 5 is older than 6"):
        await ask(server, names.MOVE_SESSIONS, ASKED, mr.SessionsReply)


async def test_remove_only_once_the_domain_is_homed_in_the_target_and_then_idempotently(store, tmp_path):
    server, accounts = store
    amy, ben = make_account(tmp_path, "amy"), make_account(tmp_path, "ben")
    accounts.open[f"amy@{DOMAIN}"] = object()
    remove = {**ASKED, "accounts": [f"amy@{DOMAIN}"]}
    accounts.directory.entry = at("sealing")
    with pytest.raises(mr.MoveRequestError, match="not homed in us yet"):
        await ask(server, names.MOVE_REMOVE, remove, mr.RemoveReply)
    assert amy.is_dir()

    accounts.directory.entry = at("flipped", home="us")
    assert (await ask(server, names.MOVE_REMOVE, remove, mr.RemoveReply)).removed == 2  # ben too: the domain goes
    assert accounts.closed == [f"amy@{DOMAIN}"]   # closed before its storage went
    assert not amy.exists() and not ben.exists()
    assert (await ask(server, names.MOVE_REMOVE, remove, mr.RemoveReply)).removed == 0
    assert (await ask(server, names.MOVE_SESSIONS, ASKED, mr.SessionsReply)).accounts_held == 0


async def test_a_pull_after_the_flip_is_refused(tmp_path):
    accounts = FakeAccounts(tmp_path)
    server = MoveServer(nc=None, node_id="mailstore-1", region="us", accounts=accounts, delivery=None,
                        members=FakeMembers(), secret=b"s" * 32, sessions_of_domain=lambda d: 0)
    accounts.directory.entry = at("flipped", home="us")
    msg = Msg(names.MOVE_PULL, {**ASKED, "address": f"bob@{DOMAIN}", "copy_pass": 2, "from_position": 0})
    msg.subject = names.domain_move_subject("us", names.MOVE_PULL)
    await server._answer(msg, peer=False)
    with pytest.raises(mr.MoveRequestError, match="is flipped"):
        mr.decode_reply(msg.answer, mr.PullReply)


class Here:
    """Delivery's routing: every account is ours."""

    async def locate(self, address: str) -> str:
        return "mailstore-1"


async def test_a_long_pull_goes_on_after_its_answer_and_the_question_asked_again_takes_its_result(tmp_path,
                                                                                                  monkeypatch):
    """The owner answers within PULL_ANSWER_WITHIN whatever the copy's length, so the asker's
    timeout can be short and a store that dies with the question is noticed soon; asked
    again, it waits for the same copy (never a second one beside it) and takes its result."""
    accounts = FakeAccounts(tmp_path)
    accounts.directory.entry = at("copying")
    server = MoveServer(nc=None, node_id="mailstore-1", region="us", accounts=accounts, delivery=Here(),
                        members=FakeMembers(), secret=b"s" * 32, sessions_of_domain=lambda d: 0)
    monkeypatch.setattr(mr, "PULL_ANSWER_WITHIN", 0)
    finish, started = asyncio.Event(), []
    reply = mr.PullReply(source_messages=3, target_messages=3, source_digest="d", target_digest="d",
                         source_position=9)

    async def pull_job(request, address):
        started.append((address, request.copy_pass))
        await finish.wait()
        if len(started) == 3:
            raise Refused("the source broke off")
        return reply

    monkeypatch.setattr(server, "_pull_job", pull_job)
    question = {**ASKED, "address": f"bob@{DOMAIN}", "copy_pass": 1, "from_position": 0}

    async def pull():
        msg = Msg(names.MOVE_PULL, question)
        msg.subject = names.domain_move_subject("us", names.MOVE_PULL)
        await server._answer(msg, peer=False)
        return mr.decode_reply(msg.answer, mr.PullReply)

    with pytest.raises(mr.MoveRequestError, match="still under way"):
        await pull()
    with pytest.raises(mr.MoveRequestError, match="still under way"):
        await pull()   # the same copy, still going
    assert started == [(f"bob@{DOMAIN}", 1)]
    finish.set()
    await asyncio.sleep(0)          # the copy finishes with nobody waiting: its result is kept
    assert await pull() == reply
    assert len(started) == 1
    # a result is given once: the next question is a new pass of the same account
    finish.clear()
    with pytest.raises(mr.MoveRequestError, match="still under way"):
        await pull()
    assert len(started) == 2
    finish.set()
    await asyncio.sleep(0)
    assert await pull() == reply
    # a copy that fails while the question waits is answered with its failure; asked again,
    # the account is copied again
    monkeypatch.setattr(mr, "PULL_ANSWER_WITHIN", 30)
    with pytest.raises(mr.MoveRequestError, match="broke off"):
        await pull()
    assert await pull() == reply
    assert len(started) == 4
    await server.stop()
