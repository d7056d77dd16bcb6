"""A domain move's questions to a region's mail stores, over the bus (request/reply).

Theory of operation
-------------------
The primary region's active controller drives a move (``colony_controller.domain_mover``);
what it needs from the mail stores it asks over ``names.domain_move_subject(region, verb)``,
subjects that cross the leafnode link, served in the queue group ``names.QUEUE_DOMAIN_MOVE``
by the asked region's stores, each subscribed to ``names.domain_move_requests_of(its region)``
only (a wildcard region would answer other regions' questions) (the store that receives a question asks its region's peers
itself, over the region-local ``colony.mailstore.>`` subjects, when it needs them)::

    pull      to the TARGET region: pull one account from the source region's store and merge
              it, holding the account's lock in the target for the whole pass
              request PullRequest   reply PullReply
    sessions  to the SOURCE region: the domain's open IMAP/POP sessions and the accounts
              whose copy it still holds
              request SessionsRequest   reply SessionsReply
    remove    to the SOURCE region, after ``flipped``: remove the domain's copy (idempotent)
              request RemoveRequest   reply RemoveReply

Every request carries the move's id and the controller's epoch, so a store can refuse a
question from a controller that has lost the lease to a newer one.  A reply is either the
answer or ``{"error": "..."}`` (``MoveRequestError`` on the asking side); the controller's
rules treat a failed pass as not verified and try again, so an error is never fatal.

A pull is answered within ``PULL_ANSWER_WITHIN`` seconds however long the copy takes: a
copy still under way by then goes on in the owner's background and the answer is an error
saying so; the same question asked again waits for that copy (or takes its result) instead
of starting another.  So the asker's timeout is short, and a store that dies with the
question in hand (SIGKILL: nobody tells the asker) costs ``PULL_ASK_TIMEOUT``, not the
length of a whole copy; the question then reaches a live store, which pulls again once the
account's lease has passed to it.

Wire form (JSON bodies, one message each way)::

    colony.move.us.pull      {"domain": "acme.example", "move_id": "01J...", "source": "eu",
                              "target": "us", "epoch": 7, "address": "bob@acme.example",
                              "copy_pass": 1, "from_position": 0}
                          -> {"source_messages": 12, "target_messages": 12, "source_digest": "9f..",
                              "target_digest": "9f..", "source_position": 4711}
    colony.move.eu.sessions  {"domain": ..., "move_id": ..., "source": "eu", "target": "us", "epoch": 7}
                          -> {"sessions": 0, "accounts_held": 3}
    colony.move.eu.remove    {..., "accounts": ["bob@acme.example", ...]}
                          -> {"removed": 3}
    any                   -> {"error": "acme.example is not homed in us yet (phase sealing); ..."}

The store that takes a question passes it on inside its region with the same bodies and
replies on ``names.mailstore_move_subject(peer, verb)`` (``colony_mailstore.moves``: the pull
to the account's owner, ``sessions`` and ``remove`` to every store, each answering for itself).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

MAX_ACCOUNTS = 100_000  # accounts of one remove request: bounded whatever the asker sends
PULL_ANSWER_WITHIN = 15.0  # seconds the pulling owner waits for its copy before answering "still under way"
PULL_PASS_ON_TIMEOUT = PULL_ANSWER_WITHIN + 5.0  # the store that passed the pull on waits this long for the owner
PULL_ASK_TIMEOUT = PULL_PASS_ON_TIMEOUT + 10.0   # the controller's timeout for a pull question


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Asked(_Message):
    domain: str = Field(min_length=1, max_length=253)
    move_id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=64)
    epoch: int = Field(ge=0)


class PullRequest(_Asked):
    address: str = Field(min_length=3, max_length=320)
    copy_pass: int = Field(ge=1)
    from_position: int = Field(ge=0)


class PullReply(_Message):
    source_messages: int = Field(ge=0)
    target_messages: int = Field(ge=0)
    source_digest: str
    target_digest: str
    source_position: int = Field(ge=0)


class SessionsRequest(_Asked):
    pass


class SessionsReply(_Message):
    sessions: int = Field(ge=0)
    accounts_held: int = Field(ge=0)  # accounts of the domain the source still stores


class RemoveRequest(_Asked):
    accounts: tuple[str, ...] = Field(max_length=MAX_ACCOUNTS)


class RemoveReply(_Message):
    removed: int = Field(ge=0)  # accounts removed by this call (0 when done before)


class ErrorReply(_Message):
    error: str


class MoveRequestError(Exception):
    """The asked region's store refused or failed; the step may simply be repeated."""


Reply = TypeVar("Reply", bound=_Message)


def decode_reply(data: bytes, kind: type[Reply]) -> Reply:
    """The answer, or MoveRequestError with the store's words (or the malformed reply's)."""
    try:
        return kind.model_validate_json(data)
    except ValueError:
        try:
            raise MoveRequestError(ErrorReply.model_validate_json(data).error) from None
        except ValueError:
            raise MoveRequestError(f"malformed {kind.__name__}: {data[:120]!r}") from None
