"""Secrets in PROVISIONING, sealed: password hashes, SIP HA1 and token digests never travel
the event log in the clear, and a replaced or deleted one is shredded.

Theory of operation
-------------------
PROVISIONING keeps every event forever (it is the source of truth the read model is rebuilt
from), so a secret written into it in the clear would stay readable by anyone who may read
the stream, including every old password hash.  Instead:

* **Account credentials.**  Each time an account's credentials are written
  (``AccountCreated``, ``AccountPasswordSet``) a fresh 256-bit data key is made and kept in
  the KV bucket ``names.BUCKET_SECRET_KEYS`` (history 1, readable and writable by the admin
  API's bus identity only) under ``cred.<key id>``.  ``password_hash`` and every ``sip_ha1``
  value in the event become ``sealed:1:<key id>:<base64url(nonce | AES-256-GCM ciphertext)>``
  with the key id as associated data.  Once the event that replaces them (a new password,
  new SIP credentials, the account's deletion) is appended, the old key is purged from the
  bucket: the old ciphertext in the log can never be opened again (crypto-shredding).
* **API tokens.**  A token's ``secret_sha256`` becomes HMAC-SHA256(token key, SHA-256 of
  the secret) in hex (so the read model's 64-character column still holds it), the key under
  ``token.<token id>``; revoking the token purges its key, and the stored digest is then
  worthless.  Without the key the digest says nothing about the secret.
* **Reading.**  Folding an aggregate keeps the sealed strings; only the current values are
  opened (``open``), at the moment they are needed: a password check, a SIP credential
  request, a command that compares or keeps the current hash.  Old, shredded values are
  never asked for, so rebuilding the read model (which stores the sealed strings as they
  are in the events) gives the same rows as the live one.
* **Events from before sealing** carry clear values (no ``sealed:`` prefix); ``open``
  returns them as they are and a token digest without a key is compared as plain SHA-256,
  so existing clusters keep working.  Those clear values stay in the log (a stream is
  append-only); the next password change or token revocation writes sealed values, but the
  old clear event remains readable by the roles allowed to read PROVISIONING.

Ordering: the new key is written before the event that uses it, the old key is purged only
after that event is appended.  A crash in between leaves an unused key or an old key that
is no longer referenced (the value it opens is superseded, not lost); neither can make a
current secret unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from colony import events as ev
from colony.bus import names
from colony.bus.pipelined import landed, publish_pipelined

log = logging.getLogger("colony.admin.sealing")

SEALED_PREFIX = "sealed:1:"
_NONCE = 12


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def key_id_of(value: object) -> str | None:
    """The data key id a sealed value names, None for a clear (or missing) value."""
    if not is_sealed(value):
        return None
    kid, sep, _ = value[len(SEALED_PREFIX):].partition(":")  # type: ignore[index]
    return kid if sep and kid else None


def cred_key(kid: str) -> str:
    return f"cred.{kid}"


def token_key(token_id: str) -> str:
    return f"token.{token_id}"


def _sealer(kid: str, key: bytes, random: Callable[[int], bytes] = os.urandom) -> Callable[[str], str]:
    """Seals values under one data key: a credential's password hash and HA1s share its key,
    so the cipher is set up once per credential, not once per value (an import seals
    thousands).  Each value still gets its own random nonce."""
    aead, aad, head = AESGCM(key), kid.encode(), f"{SEALED_PREFIX}{kid}:"

    def seal(plaintext: str) -> str:
        nonce = random(_NONCE)
        blob = base64.urlsafe_b64encode(nonce + aead.encrypt(nonce, plaintext.encode(), aad))
        return head + blob.rstrip(b"=").decode()
    return seal


def seal_with(kid: str, key: bytes, plaintext: str) -> str:
    return _sealer(kid, key)(plaintext)


def open_with(value: str, key: bytes) -> str | None:
    kid = key_id_of(value)
    if kid is None:
        return value
    blob = value[len(SEALED_PREFIX) + len(kid) + 1:]
    try:
        raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], kid.encode()).decode()
    except (ValueError, InvalidTag):
        return None


def token_digest(key: bytes, secret_sha256: str) -> str:
    return hmac.new(key, secret_sha256.encode(), hashlib.sha256).hexdigest()


def state_keys(state: dict | None) -> list[str]:
    """The bucket keys the secrets of an aggregate's current state depend on."""
    if not state:
        return []
    if state.get("kind") == "token" or "secret_sha256" in state:
        token_id = state.get("token_id") or state.get("id")
        return [token_key(token_id)] if token_id else []
    kids = {key_id_of(state.get("password_hash"))} | {key_id_of(v) for v in (state.get("sip_ha1") or {}).values()}
    return [cred_key(k) for k in sorted(k for k in kids if k)]


@dataclass
class Sealed:
    events: list[ev.Event]
    fresh: list[str] = field(default_factory=list)  # keys written for these events
    stale: list[str] = field(default_factory=list)  # keys to purge once they are appended


class CredentialSealer:
    """Seals the credentials of many new accounts (a bulk import), each under a fresh data key
    of its own exactly as ``SecretKeys.seal`` does one by one; ``SecretKeys.store`` then writes
    the keys together, before any event naming them is appended.

    What a credential costs here is its cipher set-up and one encryption per value.  The random
    key ids, keys and nonces are consecutive slices of one ``os.urandom`` read per
    ``POOL`` bytes (a read per id, key and nonce was four system calls per account, more than
    the encryption itself); slices of the kernel's CSPRNG output are as random as separate
    reads, and none is used twice.  ``seal`` hands back the sealed values so that a caller
    building the event can build it sealed at once, instead of building it in the clear and
    copying it.  The pool holds key material, as the keys themselves do, only as long as the
    sealer lives (one import batch).
    """

    POOL = 65536

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes]] = []  # (bucket key, data key) to store
        self._pool, self._at = b"", 0

    def _random(self, n: int) -> bytes:
        if self._at + n > len(self._pool):
            self._pool, self._at = os.urandom(self.POOL), 0
        self._at += n
        return self._pool[self._at - n:self._at]

    def seal(self, password_hash: str | None, sip_ha1: dict[str, str]) -> tuple[str | None, dict[str, str], str | None]:
        """(password hash, HA1s, bucket key of their fresh data key): the clear values sealed
        under a new key; values already sealed are kept; no key (None) if nothing was clear."""
        if password_hash is None and not sip_ha1:
            return None, sip_ha1, None  # nothing to seal: most rows of an import without credentials
        if (password_hash is None or is_sealed(password_hash)) and all(is_sealed(v) for v in sip_ha1.values()):
            return password_hash, sip_ha1, None
        kid, key = self._random(16).hex(), self._random(32)
        seal = _sealer(kid, key, self._random)
        if password_hash is not None and not is_sealed(password_hash):
            password_hash = seal(password_hash)
        if sip_ha1:
            sip_ha1 = {a: v if is_sealed(v) else seal(v) for a, v in sip_ha1.items()}
        name = cred_key(kid)
        self.writes.append((name, key))
        return password_hash, sip_ha1, name

    def forget(self, name: str | None) -> None:
        """Do not store the key ``seal`` just made (its event was not built after all)."""
        if name is not None and self.writes and self.writes[-1][0] == name:
            self.writes.pop()

    def seal_event(self, event: ev.Event) -> Sealed:
        """``SecretKeys.seal([event])`` for a new account (the event copied with its values
        sealed); any other event as it is."""
        if not isinstance(event, ev.AccountCreated):
            return Sealed([event])
        hashed, ha1, name = self.seal(event.password_hash, event.sip_ha1)
        if name is None:
            return Sealed([event])
        return Sealed([event.model_copy(update={"password_hash": hashed, "sip_ha1": ha1})], fresh=[name])


def _sealed_credentials(event: ev.AccountCreated | ev.AccountPasswordSet, kid: str, key: bytes):
    """The event with its clear password hash and HA1s sealed under ``key`` (id ``kid``)."""
    seal, update = _sealer(kid, key), {}
    if event.password_hash is not None and not is_sealed(event.password_hash):
        update["password_hash"] = seal(event.password_hash)
    if event.sip_ha1:
        update["sip_ha1"] = {a: v if is_sealed(v) else seal(v) for a, v in event.sip_ha1.items()}
    return event.model_copy(update=update) if update else event


# The events ``SecretKeys.seal`` changes or names keys for; it hands any other back as it is.
_KEYED = (ev.AccountCreated, ev.AccountPasswordSet, ev.AccountDeleted, ev.ApiTokenCreated, ev.ApiTokenRevoked)


class SecretKeys:
    """The data keys, in ``names.BUCKET_SECRET_KEYS``; the bucket is opened on first use."""

    def __init__(self, js: JetStreamContext, nc: Client | None = None) -> None:
        # ``nc``: the connection ``js`` was made from, needed by ``seal_creations`` only (its
        # pipelined key writes; a JetStream context exposes its own only as a private)
        self.js, self.nc = js, nc
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(names.BUCKET_SECRET_KEYS)
        return self._kv

    async def _get(self, key: str) -> bytes | None:
        try:
            entry = await (await self.kv()).get(key)
        except KeyNotFoundError:  # also a purged key
            return None
        return base64.b64decode(entry.value) if entry.value else None

    async def _new(self, key: str) -> bytes:
        material = AESGCM.generate_key(bit_length=256)
        await (await self.kv()).put(key, base64.b64encode(material))
        return material

    async def _token_key(self, token_id: str) -> bytes:
        # Get or create, never overwrite: two bootstrap starters race on the fixed id, and the
        # one whose event lands must find the key it used.  A token key is therefore never
        # purged when an append loses (the winner may use it), only on revocation.
        kv, key = await self.kv(), token_key(token_id)
        material = AESGCM.generate_key(bit_length=256)
        try:
            await kv.create(key, base64.b64encode(material))
            return material
        except KeyWrongLastSequenceError:
            found = await self._get(key)
            if found is None:
                raise
            return found

    async def open(self, value: str | None) -> str | None:
        """The clear value; a clear (pre-sealing) value as it is; None once shredded."""
        kid = key_id_of(value)
        if kid is None:
            return value
        key = await self._get(cred_key(kid))
        if key is None:
            return None
        opened = open_with(value, key)  # type: ignore[arg-type]
        if opened is None:
            log.error("sealed secret under key %s does not open: wrong key or damaged value", kid)
        return opened

    async def open_state(self, state: dict | None) -> dict | None:
        """A folded account state with its current credentials opened."""
        if not state or (not is_sealed(state.get("password_hash"))
                         and not any(is_sealed(v) for v in (state.get("sip_ha1") or {}).values())):
            return state
        opened = dict(state)
        opened["password_hash"] = await self.open(state.get("password_hash"))
        ha1 = {}
        for algorithm, value in (state.get("sip_ha1") or {}).items():
            clear = await self.open(value)
            if clear is not None:
                ha1[algorithm] = clear
        opened["sip_ha1"] = ha1
        return opened

    async def token_matches(self, token_id: str, secret_sha256: str, stored: str) -> bool:
        key = await self._get(token_key(token_id))
        # Without a key: a token from before sealing (plain SHA-256), or a revoked one whose
        # key is shredded (its HMAC never equals a plain digest).
        expected = token_digest(key, secret_sha256) if key is not None else secret_sha256
        return hmac.compare_digest(expected, stored)

    async def seal(self, events: Iterable[ev.Event], current_keys: Iterable[str] = ()) -> Sealed:
        """Seal the secrets of ``events`` with fresh keys; say which keys of the current state
        (``current_keys``, see ``state_keys``) the events make obsolete."""
        out = Sealed([])
        current = list(current_keys)
        for event in events:
            if isinstance(event, (ev.AccountCreated, ev.AccountPasswordSet)):
                clear = ([event.password_hash] if event.password_hash and not is_sealed(event.password_hash) else []) \
                    + [v for v in event.sip_ha1.values() if not is_sealed(v)]
                if clear:
                    kid = secrets.token_hex(16)
                    key = await self._new(cred_key(kid))
                    out.fresh.append(cred_key(kid))
                    event = _sealed_credentials(event, kid, key)
                out.stale += [k for k in current if k.startswith("cred.")]
            elif isinstance(event, ev.AccountDeleted):
                out.stale += current
            elif isinstance(event, ev.ApiTokenCreated):
                key = await self._token_key(event.token_id)
                event = event.model_copy(update={"secret_sha256": token_digest(key, event.secret_sha256)})
            elif isinstance(event, ev.ApiTokenRevoked):
                out.stale.append(token_key(event.token_id))
            out.events.append(event)
        fresh = set(out.fresh)
        out.stale = [k for k in dict.fromkeys(out.stale) if k not in fresh]
        return out

    async def seal_creations(self, events: list[ev.Event]) -> list[Sealed]:
        """``seal([event])`` for each of many new aggregates (a bulk import): the accounts'
        credentials through one ``CredentialSealer``, their key writes pipelined on one reply
        subscription (one awaited ``KeyValue.put`` per account was most of an import's cost
        when its rows carry password hashes).  Every key is stored (acknowledged) before this
        returns, so no event is appended naming a key that is not there."""
        sealer = CredentialSealer()
        out = [sealer.seal_event(event) if isinstance(event, ev.AccountCreated) else None for event in events]
        await self.store(sealer)
        for i, event in enumerate(events):
            if out[i] is None:
                # A domain's creation (most of the rest of an import) holds no secret and names
                # no key: ``seal`` would hand it back as it is, after a coroutine and five
                # missed isinstance checks per domain.
                out[i] = await self.seal([event]) if isinstance(event, _KEYED) else Sealed([event])
        return out  # type: ignore[return-value]

    async def store(self, sealer: CredentialSealer) -> None:
        """Write the data keys ``sealer`` made, pipelined; every one acknowledged on return."""
        writes, sealer.writes = sealer.writes, []
        await self._put_many(writes)

    async def _put_many(self, writes: list[tuple[str, bytes]], timeout: float = 5.0) -> None:
        if not writes:
            return
        if self.nc is None:
            raise RuntimeError("SecretKeys.seal_creations needs the connection: SecretKeys(js, nc)")
        kv = await self.kv()
        acks = await publish_pipelined(self.nc, [(names.kv_subject(names.BUCKET_SECRET_KEYS, key), base64.b64encode(material), None)
                                                 for key, material in writes], timeout)
        for (key, material), ack in zip(writes, acks, strict=True):
            if not landed(ack):
                # Lost or refused: write it again the ordinary way (a put of the same
                # material is harmless if the first one landed), raising if that fails too.
                await kv.put(key, base64.b64encode(material))

    async def shred(self, keys: Iterable[str]) -> None:
        """Purge keys (every revision): what they sealed can never be opened again."""
        kv = await self.kv()
        for key in keys:
            await kv.purge(key)

    async def shred_quietly(self, keys: Iterable[str], why: str) -> None:
        try:
            await self.shred(keys)
        except Exception:
            # A key left behind opens a value that is superseded, never a current one; it is
            # logged so an operator can purge it (`nats kv purge secret_keys <key>`).
            log.exception("could not purge secret keys %s (%s)", list(keys), why)
