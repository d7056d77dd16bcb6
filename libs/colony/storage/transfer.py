"""Copying an account's mail into another copy of it (a domain moving to another region).

Theory of operation
-------------------
The source is a ``MailState`` (read without claiming the account: ``mailbox.read_state``,
or the owner's own state) and a way to read its bodies; the target is an ``AccountMail``
its owner holds in the other region.  ``merge`` makes the target hold every message the
source holds, and may be run any number of times: it is how the domain move's first pass
(bulk, while users still work in the source) and second pass (catch-up, while logins are
sealed) are both done, and how a pass interrupted by a crash is simply run again.

Every message the merge stores carries a *merge key* as its dedupe key: ``move:`` plus the
source message's own key -- its delivery key ``<message id>/<recipient>`` when it has one
(and is not itself a ``move:`` key from an earlier move), otherwise ``<mailbox>/<UIDVALIDITY>/<UID>``,
which names one message in one mailbox for good (UIDs are never reused under one
UIDVALIDITY).  So the target can tell, from its own journal and nothing else:

* a message it already copied (its merge key is there): only its flags are brought in line
  with the source (users work in the source until the flip, so the source's flags win);
* a message it copied that the source no longer has (a ``move:`` key the source lacks): the
  user expunged or moved it in the source between passes, so it is expunged here too;
* a message that reached the target by routing (a plain delivery key ``K``): never
  expunged by a merge, and it *is* the copy of a source message of key ``K`` (the merge key
  ``move:K`` and the delivery key ``K`` name one message), so the merge does not store it again.

The other order -- the merge stored ``move:K`` first, then a redelivery of ``K`` arrives by
routing -- is caught by the delivery itself: ``AccountMail.append`` treats a key whose
``move:`` form it holds as a duplicate (within the dedupe window, which redeliveries fall in).

Verification: the source hashes the sorted ``(mailbox, merge key, body SHA-256, flags)`` of
all its messages (``source_digest``) and counts them; the target hashes the same of its
messages under the source's merge keys (``target_digest(target, source_keys(source))``).
Equal counts and digests mean every source message is in the target once, with the same
body and flags.  A renamed mailbox changes the merge keys of what it holds (the name is in
them), so a rename between passes costs a re-copy of that mailbox, never a loss; a folder
the source no longer has is deleted here once the merge has emptied it (routing delivers to
default mailboxes only, so nothing else could have put mail in it).

Colleagues' own \\Seen in shared folders (``seen`` records in the owner's journal, part of
the ``MailState``) follows the source on the copy of each source message, after the messages
(the target's UIDs are known then); it is not in the digest, which an older source computes
without it.

Memory is bounded by one body at a time and ``batch`` staged records; the target is
committed every ``batch`` records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from colony.storage.mailbox import DEFAULT_MAILBOXES, INBOX, AccountMail, MailState, Message

MOVE_PREFIX = "move:"
_DEFAULTS = frozenset(name for name, _use in DEFAULT_MAILBOXES)


def merge_key(mailbox: str, uidvalidity: int, msg: Message) -> str:
    if msg.key and msg.key.startswith(MOVE_PREFIX):
        return msg.key  # copied here by an earlier move: keep its identity
    return MOVE_PREFIX + (msg.key if msg.key else f"{mailbox}/{uidvalidity}/{msg.uid}")


@dataclass(frozen=True)
class Entry:
    mailbox: str
    key: str           # the merge key
    uid: int
    msg: Message


def _source_entries(state: MailState) -> Iterator[Entry]:
    for box in sorted(state.boxes.values(), key=lambda b: (b.name != INBOX, b.name)):
        seen: set[str] = set()
        for uid, msg in box.messages.items():
            key = merge_key(box.name, box.uidvalidity, msg)
            if key in seen:
                continue  # the same delivery twice in one mailbox cannot be stored twice by dedupe; be safe
            seen.add(key)
            yield Entry(box.name, key, uid, msg)


def _target_index(state: MailState) -> dict[str, tuple[Entry, bool]]:
    """merge key -> (the target's message, whether it came by routing rather than by a copy).
    A routed delivery's key ``K`` stands for the merge key ``move:K``: the same message."""
    index: dict[str, tuple[Entry, bool]] = {}
    for box in state.boxes.values():
        for uid, msg in box.messages.items():
            if not msg.key:
                continue
            copied = msg.key.startswith(MOVE_PREFIX)
            key = msg.key if copied else MOVE_PREFIX + msg.key
            if key not in index or copied:
                index[key] = (Entry(box.name, key, uid, msg), not copied)
    return index


@dataclass(frozen=True)
class Digest:
    messages: int
    sha256: str


def digest(entries: Iterator[Entry], read_body: Callable[[str], bytes]) -> Digest:
    rows = sorted((e.mailbox, e.key, hashlib.sha256(read_body(e.msg.body)).hexdigest(), " ".join(sorted(e.msg.flags)))
                  for e in entries)
    h = hashlib.sha256()
    for row in rows:
        h.update("\x00".join(row).encode() + b"\n")
    return Digest(len(rows), h.hexdigest())


def source_digest(state: MailState, read_body: Callable[[str], bytes]) -> Digest:
    return digest(_source_entries(state), read_body)


def source_keys(state: MailState) -> set[str]:
    """The merge keys of everything the source holds: what the target's digest is taken over."""
    return {e.key for e in _source_entries(state)}


def target_digest(target: AccountMail, keys: set[str]) -> Digest:
    """The target's digest over the source's merge keys: equal to the source's exactly when
    every source message is here once, with the same body and flags."""
    entries = (entry for key, (entry, _routed) in _target_index(target.state).items() if key in keys)
    return digest(entries, lambda name: (target.bodies_dir / name).read_bytes())


@dataclass(frozen=True)
class MergeReport:
    appended: int
    flags_changed: int
    expunged: int
    mailboxes_created: int
    mailboxes_deleted: int
    source_position: int     # the source journal position the merge brought the target up to
    seen_changed: int = 0    # seen records written for colleagues' own \Seen (shared folders)


def merge(target: AccountMail, source: MailState, read_body: Callable[[str], bytes], *,
          batch: int = 200) -> MergeReport:
    """Bring ``target`` up to ``source`` (see the module docstring); commits as it goes."""
    created = appended = flags_changed = expunged = deleted = staged = 0

    def flush(force: bool = False) -> None:
        nonlocal staged
        if staged >= batch or (force and staged):
            target.commit()
            staged = 0

    for box in sorted(source.boxes.values(), key=lambda b: (b.name != INBOX, b.name)):
        if box.name.upper() != INBOX and box.name not in {b.name for b in target.state.boxes.values()}:
            target.create_mailbox(box.name, box.special_use)
            created += 1
            staged += 1
        for ident, rights in box.acl.items():
            if target.acl(box.name).get(ident) != rights:
                target.set_acl(box.name, ident, rights)
                staged += 1
    for name in sorted(source.subscribed - target.state.subscribed):
        target.subscribe(name)
        staged += 1
    flush(force=True)

    here = _target_index(target.state)
    wanted: set[str] = set()
    for entry in _source_entries(source):
        wanted.add(entry.key)
        found = here.get(entry.key)
        if found is None:
            target.append(entry.mailbox, read_body(entry.msg.body), entry.msg.flags, entry.msg.date, key=entry.key)
            appended += 1
        elif found[0].msg.flags != entry.msg.flags:
            target.store_flags(found[0].mailbox, [found[0].uid], entry.msg.flags, "set")
            flags_changed += 1
        else:
            continue
        staged += 1
        flush()
    gone: dict[str, list[int]] = {}
    for key, (entry, routed) in here.items():
        if key not in wanted and not routed:
            gone.setdefault(entry.mailbox, []).append(entry.uid)
    for mailbox, uids in gone.items():
        expunged += len(target.expunge(mailbox, uids))
        staged += 1
    # A folder the user deleted or renamed in the source between passes: nobody but the merge
    # created it here (routing delivers to default mailboxes only), and it is empty now.
    source_names = {b.name.upper() if b.name.upper() == INBOX else b.name for b in source.boxes.values()}
    for box in list(target.state.boxes.values()):
        if box.name not in source_names and box.name not in _DEFAULTS and not box.messages:
            target.delete_mailbox(box.name)
            deleted += 1
            staged += 1
    flush(force=True)
    seen_changed = _merge_private_seen(target, source)
    return MergeReport(appended, flags_changed, expunged, created, deleted, source.seq, seen_changed)


def _private_seen_rows(state: MailState, where: dict[tuple[str, int], str]) -> set[tuple[str, str]]:
    """``(merge key, colleague)`` for each colleague's own \\Seen on a message ``where`` names."""
    return {(where[(box.name, uid)], user)
            for box in state.boxes.values() for user, p in box.private.items()
            for uid in p.seen if (box.name, uid) in where}


def _merge_private_seen(target: AccountMail, source: MailState) -> int:
    """Bring each colleague's own \\Seen (``seen`` records, a shared folder's per-user \\Seen)
    on the source's messages in line with the source, as the owner's flags are: the source
    wins while users still work there.  Only messages the source holds are touched (a routed
    delivery the source lacks keeps what colleagues set on it here); a repeat changes nothing.
    Returns the number of records written (one per mailbox, colleague and direction)."""
    src = {(e.mailbox, e.uid): e.key for e in _source_entries(source)}
    keys = set(src.values())
    tgt = {(e.mailbox, e.uid): key for key, (e, _routed) in _target_index(target.state).items() if key in keys}
    by_key = {key: place for place, key in tgt.items()}
    want, have = _private_seen_rows(source, src), _private_seen_rows(target.state, tgt)
    changes: dict[tuple[str, str, bool], list[int]] = {}
    for rows, on in ((want - have, True), (have - want, False)):
        for key, user in rows:
            if key in by_key:        # a message the target lacks is already a failed merge; the digest says so
                box, uid = by_key[key]
                changes.setdefault((box, user, on), []).append(uid)
    for (box, user, on), uids in sorted(changes.items()):
        target.store_seen(box, user, uids, on)
    if changes:
        target.commit()
    return len(changes)
