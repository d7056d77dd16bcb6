"""The mailbox journal: typed records, one append-only segment file per owner epoch.

Theory of operation
-------------------
An account's mail is event-sourced (DESIGN §5): an append-only log of typed records, a
periodic snapshot of the state they build, and one file per message body.  Exactly one
mailstore may write an account at a time; it holds the account's lease in
``account_owners`` and the lease revision is its **epoch**.  The journal makes a stale
owner (paused past its lease, partitioned) harmless without any file lock:

* Each owner writes **only its own segment** ``seg-<epoch>.log``; no two processes ever
  append to one file (so neither O_APPEND atomicity nor NFS locking matters).
* Taking an account over, the new owner E first makes its segment visible with a ``Claim``
  record (temp file, fsync, rename), *then* reads its predecessor's segment, writes the
  state it rebuilt as a snapshot, and appends a ``Seal`` naming the predecessor and the
  length it accepted; the base snapshot is ``snap-<epoch>-<offset after the seal>``.  An owner is sealed once its ``Seal`` is on disk.
* An owner acknowledges a write only after its fsync **and** after checking that no segment
  of a newer epoch exists (``newer_claim``).  A write the old owner fsynced before the new
  claim appeared is read by the new owner (the claim precedes its read); a write after the
  claim is never acknowledged by the old owner and is ignored by replay.  So nothing
  acknowledged is lost and nothing a fenced owner writes late is replayed.
* Replay for epoch E: the highest *sealed* segment H below E is the truth: its newest
  snapshot within its valid length, plus its records after that snapshot.  Older segments
  (and records a fenced owner wrote after its successor's claim) are superseded by H's base
  snapshot.  Unsealed segments (an owner that died while taking over) wrote nothing else.
* A torn tail (a crash mid-append) is a last line without its newline or with a bad
  checksum: the valid prefix ends before it.  Nobody truncates another owner's file; an
  owner reopening its *own* segment in the same tenure (after a failed write) cuts its tail.
* Segments do not grow without bound: past a size the owner moves its own lease to a new
  epoch (a CAS on its revision) and takes the account over from itself, like any new owner.

Wire form of a segment: one record per line, ``<crc32 of json, 8 hex> <json>\\n``; the JSON is
a record below with ``t`` (type), ``e`` (epoch of the writer) and ``s`` (sequence: the
account's journal position, +1 per record across owners; a message's MODSEQ is the ``s`` of
its last change).  Snapshot files ``snap-<epoch>-<offset>.json`` hold the state after
applying the writer's segment up to byte ``offset``.
"""

from __future__ import annotations

import os
import re
import uuid
import zlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
SNAPSHOT_RE = re.compile(r"^snap-(\d{20})-(\d{20})\.json$")


class Fenced(Exception):
    """A newer owner has claimed this account: stop writing, acknowledge nothing more."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    e: int   # epoch of the owner that wrote it
    s: int   # journal position


class Claim(_Record):
    """``{"t":"claim","e":7,"s":0}``: first record of an owner's segment."""
    t: Literal["claim"] = "claim"


class Seal(_Record):
    """``{"t":"seal","e":7,"s":0,"prev":5,"prev_length":1234}``: the owner rebuilt the state
    from epoch ``prev``'s segment up to ``prev_length`` bytes and wrote it as its base snapshot."""
    t: Literal["seal"] = "seal"
    prev: int = 0
    prev_length: int = 0


class MailboxCreated(_Record):
    """``{"t":"mbox+","e":7,"s":12,"id":3,"name":"Sent","uidvalidity":1764075000,"special_use":"\\\\Sent"}``"""
    t: Literal["mbox+"] = "mbox+"
    id: int
    name: str
    uidvalidity: int
    special_use: str | None = None


class MailboxRenamed(_Record):
    """``{"t":"mbox~","e":7,"s":13,"id":3,"name":"Old Sent"}``"""
    t: Literal["mbox~"] = "mbox~"
    id: int
    name: str


class MailboxDeleted(_Record):
    """``{"t":"mbox-","e":7,"s":14,"id":3}``: the mailbox and its messages are gone."""
    t: Literal["mbox-"] = "mbox-"
    id: int


class MessageAppended(_Record):
    """``{"t":"msg+","e":7,"s":15,"box":1,"uid":42,"body":"7-15","flags":["\\\\Seen"],
    "date":"2026-11-25T13:30:00Z","size":1234,"key":"01JD…/bob@example.com"}``

    ``body`` names the body file (shared by copies); ``key`` dedupes redelivered mail."""
    t: Literal["msg+"] = "msg+"
    box: int
    uid: int
    body: str
    flags: list[str] = Field(default_factory=list)
    date: datetime
    size: int
    key: str | None = None


class FlagsChanged(_Record):
    """``{"t":"flags","e":7,"s":16,"box":1,"uids":[42],"flags":["\\\\Seen"]}``: the new flag sets."""
    t: Literal["flags"] = "flags"
    box: int
    uids: list[int]
    flags: list[str]


class Expunged(_Record):
    """``{"t":"expunge","e":7,"s":17,"box":1,"uids":[42]}``"""
    t: Literal["expunge"] = "expunge"
    box: int
    uids: list[int]


class SubscriptionChanged(_Record):
    """``{"t":"sub","e":7,"s":18,"name":"Archive","on":true}``"""
    t: Literal["sub"] = "sub"
    name: str
    on: bool


class AclChanged(_Record):
    """``{"t":"acl","e":7,"s":19,"box":3,"id":"bob@example.com","rights":"lrs"}``: the mailbox's
    rights for ``id`` (an address of the account's domain or ``anyone``, RFC 4314) are now
    ``rights``; ``""`` removes the entry (DELETEACL)."""
    t: Literal["acl"] = "acl"
    box: int
    id: str
    rights: str


class SeenChanged(_Record):
    """``{"t":"seen","e":7,"s":20,"box":3,"user":"bob@example.com","uids":[42],"on":true}``:
    ``user`` -- someone the owner shares the mailbox with -- has now (or no longer) seen these
    messages.  \\Seen is private per user in a shared mailbox (RFC 4314 §4/§5.1.2): a
    colleague's reading is theirs, the owner's \\Seen stays the message's own flag."""
    t: Literal["seen"] = "seen"
    box: int
    user: str
    uids: list[int]
    on: bool


Record = Annotated[Union[Claim, Seal, MailboxCreated, MailboxRenamed, MailboxDeleted, MessageAppended,
                         FlagsChanged, Expunged, SubscriptionChanged, AclChanged, SeenChanged],
                   Field(discriminator="t")]
_RECORD = TypeAdapter(Record)


def encode(record: _Record) -> bytes:
    body = record.__pydantic_serializer__.to_json(record)
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode_segment(data: bytes, limit: int | None = None) -> tuple[list[_Record], list[int], int]:
    """Records of a segment, the byte offset after each, and the valid length (the torn or
    corrupt tail, if any, excluded)."""
    end = len(data) if limit is None else min(limit, len(data))
    records, offsets, pos = [], [], 0
    while pos < end:
        nl = data.find(b"\n", pos, end)
        if nl < 0 or nl - pos < 10:
            break
        line = data[pos:nl]
        body = line[9:]
        try:
            if line[8:9] != b" " or int(line[:8], 16) != zlib.crc32(body):
                break
            records.append(_RECORD.validate_json(body))
        except ValueError:
            break
        pos = nl + 1
        offsets.append(pos)
    return records, offsets, pos


def segment_name(epoch: int) -> str:
    return f"seg-{epoch:020d}.log"


def snapshot_name(epoch: int, offset: int) -> str:
    return f"snap-{epoch:020d}-{offset:020d}.json"


def list_segments(directory: Path) -> dict[int, Path]:
    out = {}
    with os.scandir(directory) as it:
        for entry in it:
            m = SEGMENT_RE.match(entry.name)
            if m:
                out[int(m.group(1))] = Path(entry.path)
    return out


def list_snapshots(directory: Path) -> list[tuple[int, int, Path]]:
    out = []
    with os.scandir(directory) as it:
        for entry in it:
            m = SNAPSHOT_RE.match(entry.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), Path(entry.path)))
    return sorted(out)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """temp -> fsync -> rename (-> fsync the directory): readers see all of it or nothing."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def newer_claim(directory: Path, epoch: int) -> int | None:
    """The newest epoch above ``epoch`` that has claimed the account, if any."""
    newer = [e for e in list_segments(directory) if e > epoch]
    return max(newer) if newer else None


def read_snapshot(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


def write_snapshot(directory: Path, epoch: int, offset: int, state: dict) -> Path:
    path = directory / snapshot_name(epoch, offset)
    write_atomically(path, orjson.dumps({"epoch": epoch, "offset": offset, "state": state}))
    return path
