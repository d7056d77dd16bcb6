"""Bus identities and the permissions the NATS server enforces for each.

Theory of operation
-------------------
Every Colony process connects with the nkey of its role (``controller``, ``edge``,
``mailstore``, ``sipfarm``, ``admin-api``) or, for ``colony up``, the CLI and tests, of the
``operator``.  A seed is generated, never typed: ``generate_identities`` writes one
``<role>.nk`` per role (mode 0600, in a 0700 directory) and reuses the ones already there,
so a restarted cluster keeps its identities.  The server's ``authorization`` block lists the
public keys, each with the permissions ``permissions_for`` derives from the role's
``colony.bus.names.Grant``:

* a stream read is the JetStream API for that stream only (info, message and direct gets,
  creating and using its own consumers) plus acks and flow-control replies;
* a KV bucket is the stream ``KV_<bucket>`` (reads) and the subjects ``$KV.<bucket>.>``
  (writes); an object store is ``OBJ_<store>`` and ``$O.<store>.>``;
* replies go to an inbox private to the identity, ``_INBOX.<public key>``: another role
  cannot subscribe to it, so a reply carrying a credential is seen only by its asker
  (``connect_options`` sets nats-py's ``inbox_prefix`` to it);
* ``allow_responses`` lets a role answer a request it received, whatever the asker's inbox.

Nothing here opens a socket: the output is data (dicts and config text) for the server and
the client, so the table is testable without a server and the server test runs it for real.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from colony.bus import names

SEED_SUFFIX = ".nk"

# Everybody may ask JetStream who it is and which streams exist (names only, no configs).
_ANYONE = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(store: str) -> str:
    return f"OBJ_{store}"


def inbox_prefix(public_key: str) -> str:
    """The private inbox of one identity: replies, push consumers' deliveries, progress reports."""
    return f"_INBOX.{public_key}"


def _read_stream(stream: str) -> list[str]:
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*", f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{api}.CONSUMER.NAMES.{stream}", f"{api}.CONSUMER.LIST.{stream}",
        # acks (v1 and v2 reply subjects) and answers to the server's flow-control requests
        f"$JS.ACK.{stream}.>", f"$JS.ACK.*.*.{stream}.>", f"$JS.FC.{stream}.>",
    ]


def _read_bucket_in_any_region(bucket: str) -> list[str]:
    """Gets from a bucket of another region's JetStream (``$JS.<domain>.API``): an edge finds
    the mail store of an account homed elsewhere, the admin API shows every region's
    instances.  Reads only, and only of buckets the role reads at home; writes stay in their
    region (``$KV.>`` is denied on the leafnode links anyway)."""
    stream = kv_stream(bucket)
    api = "$JS.*.API"
    return [f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>"]


def _manage_schema() -> list[str]:
    # The info of the streams other regions source, in any region: the controller asks whether
    # a source's region answers before setting the source up afresh (colony.regions).
    sourced = [f"$JS.*.API.STREAM.INFO.{s}" for s in (names.STREAM_MAIL, names.STREAM_USAGE, names.STREAM_AUDIT)]
    return ["$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*", "$JS.API.STREAM.INFO.*", *sourced]


def permissions_for(grant: names.Grant, public_key: str) -> dict | None:
    """The NATS ``permissions`` map of one identity; ``None`` means unrestricted (the operator)."""
    if grant.everything:
        return None
    inbox = inbox_prefix(public_key) + ".>"
    publish: list[str] = [*_ANYONE, inbox, *grant.append, *grant.call]
    for stream in grant.read:
        publish += _read_stream(stream)
    for stream in grant.consume:
        # A queue runner (colony.queue) copies a job it gives up on to DEAD_LETTERS.
        publish += _read_stream(stream) + [f"$JS.API.STREAM.MSG.DELETE.{stream}", names.dead_letter_subject(stream)]
    publish += [f"$JS.API.STREAM.INFO.{stream}" for stream in grant.info]
    for bucket in grant.kv_write:
        publish += _read_stream(kv_stream(bucket)) + [f"$KV.{bucket}.>"]
    for bucket in grant.kv_read:
        publish += _read_stream(kv_stream(bucket))
    for bucket in (*grant.kv_write, *grant.kv_read):
        publish += _read_bucket_in_any_region(bucket)
    for store in grant.obj_write:
        publish += _read_stream(object_stream(store)) + [f"$O.{store}.>", f"$JS.API.STREAM.PURGE.{object_stream(store)}"]
    for store in grant.obj_read:
        publish += _read_stream(object_stream(store))
    if grant.manage_schema:
        publish += _manage_schema()
    subscribe = [inbox, *grant.serve, *grant.listen]
    return {
        "publish": {"allow": list(dict.fromkeys(publish))},
        "subscribe": {"allow": list(dict.fromkeys(subscribe))},
        "allow_responses": True,  # every instance answers the controller's commands
    }


@dataclass(frozen=True)
class Identity:
    role: str
    seed_file: Path

    @property
    def public_key(self) -> str:
        return public_key_of(self.seed_file)


def public_key_of(seed_file: Path) -> str:
    keys = nkeys.from_seed(seed_file.read_bytes().strip())
    try:
        return keys.public_key.decode()
    finally:
        keys.wipe()


def generate_identities(directory: Path, roles: tuple[str, ...] | None = None) -> dict[str, Identity]:
    """One nkey per role in ``directory`` (0700), each seed 0600; existing seeds are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    found = {}
    for role in roles or tuple(names.GRANTS):
        path = directory / f"{role}{SEED_SUFFIX}"
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            # O_EXCL with the mode set at creation: the secret is never readable by others,
            # not even between open() and chmod().
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(seed + b"\n")
        path.chmod(0o600)
        found[role] = Identity(role, path)
    return found


def authorization_config(identities: dict[str, Identity]) -> str:
    """The server's ``authorization`` block (NATS config accepts JSON values)."""
    users = []
    for role, identity in identities.items():
        key = identity.public_key
        user: dict = {"nkey": key}
        perms = permissions_for(names.GRANTS[role], key)
        if perms is not None:
            user["permissions"] = perms
        users.append(user)
    return "authorization {\n  users: " + json.dumps(users, indent=2) + "\n}\n"
