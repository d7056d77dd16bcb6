"""The first system-admin token of a cluster.

It is an ordinary token aggregate with a fixed id, created with expected version 0: the
stream itself guarantees that only the first admin-api instance to start (of any number
racing) creates it, and that a restart never makes a second one.  That instance writes the
plaintext once to ``<data_dir>/admin.token`` (mode 0600), where ``colony up`` finds it to
print and the CLI reads it; nothing else ever sees the plaintext.

In compose the one-shot ``admin-bootstrap`` service runs ``python -m colony_admin.bootstrap``
(``main`` below) with the admin API's bus identity before any admin API starts, its data
directory a host directory (``infra/secrets/bootstrap``): the token lands on the Docker
host, where the operator reads it (infra/README.md).  It waits for the schema, creates the
token if the cluster never had one, and exits 0 either way, so a restart is harmless.
"""

from __future__ import annotations

import os
from pathlib import Path

from nats.aio.client import Client

from colony.bus import names
from colony.eventstore import ConcurrencyConflict, EventStore
from colony.settings import Settings
from colony_admin import aggregates
from colony_admin.auth import secrets
from colony_admin.auth.sealing import SecretKeys
from colony_admin.models import Role, TokenCreate

BOOTSTRAP_TOKEN_ID = "bootstrap0000000"  # 16 characters, like every token id
TOKEN_FILE = "admin.token"  # in the data directory; `colony up` and the CLI read it there


async def ensure_bootstrap_token(settings: Settings, nc: Client) -> str | None:
    """Create the bootstrap system-admin token if it never existed; return its plaintext once.

    Returns None when it exists already (or existed and was revoked: then the operator has
    made other tokens).  ``settings`` is accepted for symmetry with the other entry points.
    """
    del settings
    store = EventStore(nc.jetstream(timeout=5.0), names.STREAM_PROVISIONING, nc=nc)
    subject = names.provisioning_subject(names.AGG_TOKEN, BOOTSTRAP_TOKEN_ID)
    if await store.version(subject):
        return None
    _, random_token, digest = secrets.new_token()
    token = f"{secrets.TOKEN_PREFIX}{BOOTSTRAP_TOKEN_ID}_{secrets.split_token(random_token)[1]}"
    events = aggregates.create_token(None, BOOTSTRAP_TOKEN_ID,
                                     TokenCreate(name="bootstrap", role=Role.SYSTEM_ADMIN), digest, "colony up")
    keys = SecretKeys(nc.jetstream(timeout=5.0), nc)
    sealed = await keys.seal(events)  # the digest is keyed, like every token's (auth/sealing.py)
    try:
        await store.append(subject, [e.encode() for e in sealed.events], 0)
    except ConcurrencyConflict:
        # Another starter won the race.  Both used the one key under the token's name (it is
        # got or created, never overwritten), so nothing is left to undo.
        return None
    return token


async def write_bootstrap_token(settings: Settings, nc: Client) -> Path | None:
    """On the cluster's first start: create the bootstrap token and write it to
    ``<data_dir>/admin.token`` (0600); the file's path, or None if the token existed already."""
    token = await ensure_bootstrap_token(settings, nc)
    if token is None:
        return None
    path = settings.data_dir / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name and renamed, so a reader never sees half a token;
    # created 0600, so it is never readable by others, not even for a moment.
    partial = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(partial, path)
    return path


async def _run_job(settings: Settings) -> Path | None:
    from colony.bus.connection import connect
    from colony.bus.schema import ensure_schema

    nc = await connect(settings, name="admin-bootstrap", persistent=False)
    try:
        # The controller creates the schema (secret_keys included); this identity may not.
        await ensure_schema(nc.jetstream(timeout=5.0), settings, deadline=120.0, manage=False)
        return await write_bootstrap_token(settings, nc)
    finally:
        await nc.close()


def main() -> None:
    """``python -m colony_admin.bootstrap``: the compose job that makes the first token."""
    import asyncio
    import logging
    import sys

    from colony.settings import ConfigError, load_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        written = asyncio.run(_run_job(settings))
    except ConfigError as exc:
        print(f"admin-bootstrap: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if written is None:
        print("admin-bootstrap: the cluster has its first token already; nothing to do")
    else:
        print(f"admin-bootstrap: first system-admin token written to {written} (mode 0600)")


if __name__ == "__main__":
    main()
