"""The sealing rules of colony_admin/auth/sealing.py, without a bus: what a sealed value looks
like, that only its own key opens it, that tampering is detected, and which keys a state uses."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from colony.settings import ConfigError, Settings
from colony_admin.auth import sealing


def test_a_sealed_value_names_its_key_and_opens_only_with_it():
    key, other = AESGCM.generate_key(bit_length=256), AESGCM.generate_key(bit_length=256)
    kid = secrets.token_hex(16)
    value = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    sealed = sealing.seal_with(kid, key, value)
    assert sealing.is_sealed(sealed) and sealing.key_id_of(sealed) == kid
    assert value not in sealed
    assert sealing.open_with(sealed, key) == value
    assert sealing.open_with(sealed, other) is None
    # Two seals of one value differ (fresh nonce): equal secrets are not visible as equal.
    assert sealing.seal_with(kid, key, value) != sealed


def test_tampering_and_a_moved_key_id_are_detected():
    key = AESGCM.generate_key(bit_length=256)
    sealed = sealing.seal_with("a" * 32, key, "secret")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert sealing.open_with(flipped, key) is None
    # The key id is associated data: the ciphertext cannot be relabelled.
    relabelled = sealed.replace("a" * 32, "b" * 32)
    assert sealing.open_with(relabelled, key) is None
    assert sealing.open_with(sealing.SEALED_PREFIX + "x:not-base64!", key) is None


def test_clear_values_from_before_sealing_pass_through():
    assert not sealing.is_sealed("{SSHA}abc") and sealing.key_id_of("{SSHA}abc") is None
    assert sealing.open_with("{SSHA}abc", b"k" * 32) == "{SSHA}abc"
    assert sealing.key_id_of(None) is None


def test_state_keys_name_the_keys_a_state_depends_on():
    key = AESGCM.generate_key(bit_length=256)
    sealed = sealing.seal_with("k1", key, "h")
    ha1 = sealing.seal_with("k1", key, "x")
    assert sealing.state_keys({"kind": "account", "password_hash": sealed, "sip_ha1": {"MD5": ha1}}) == ["cred.k1"]
    assert sealing.state_keys({"kind": "account", "password_hash": "{SSHA}old", "sip_ha1": {}}) == []
    assert sealing.state_keys({"kind": "token", "id": "abcd", "secret_sha256": "00"}) == ["token.abcd"]
    assert sealing.state_keys(None) == []


def test_token_digest_depends_on_the_key():
    digest = "ab" * 32
    one, two = sealing.token_digest(b"1" * 32, digest), sealing.token_digest(b"2" * 32, digest)
    assert one != two and len(one) == 64 and digest not in (one, two)


def test_database_url_file_is_read_and_errors_name_the_key(tmp_path):
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql+psycopg://colony:pw@postgres:5432/colony\n")
    assert Settings(database_url_file=url_file).sqlalchemy_url == "postgresql+psycopg://colony:pw@postgres:5432/colony"
    with pytest.raises(ConfigError, match="^COLONY_DATABASE_URL_FILE: "):
        _ = Settings(database_url_file=tmp_path / "missing").sqlalchemy_url
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="^COLONY_DATABASE_URL_FILE: "):
        _ = Settings(database_url_file=tmp_path / "empty").sqlalchemy_url


@pytest.mark.parametrize("content", ["colony:pw@postgres:5432/colony", "https://postgres/colony",
                                     "postgresql+psycopg://colony:pw@postgres:port/colony"])
def test_a_database_url_file_without_a_url_is_named_and_its_content_is_not_shown(tmp_path, content):
    """Such a file loaded, and the admin API (or projector) stopped later with SQLAlchemy's
    ArgumentError or NoSuchModuleError traceback, naming no setting."""
    url_file = tmp_path / "database-url"
    url_file.write_text(content + "\n")
    with pytest.raises(ConfigError, match="^COLONY_DATABASE_URL_FILE: .* does not hold a SQLAlchemy URL") as info:
        _ = Settings(database_url_file=url_file).sqlalchemy_url
    assert "pw" not in str(info.value) and "https" not in str(info.value)


def test_a_sealer_makes_a_key_only_for_clear_credentials():
    sealer = sealing.CredentialSealer()
    assert sealer.seal(None, {}) == (None, {}, None) and sealer.writes == []
    hashed, ha1, name = sealer.seal("{SSHA}abc", {"MD5": "0" * 32})
    assert [key for key, _ in sealer.writes] == [name]
    assert sealer.seal(hashed, ha1) == (hashed, ha1, None) and len(sealer.writes) == 1  # sealed already
    _, _, second = sealer.seal(None, {"MD5": "1" * 32})
    assert second not in (None, name) and len(sealer.writes) == 2


def test_bulk_sealing_hands_unkeyed_events_back_as_seal_does():
    """``seal_creations`` skips ``seal`` for events it would hand back unchanged (a domain's
    creation, a fence): the result must be what ``seal`` gives, event for event."""
    import asyncio

    from colony import events as ev

    keys = sealing.SecretKeys(js=None)  # type: ignore[arg-type] - nothing here reaches the bus
    events = [ev.DomainCreated(domain="a.example", cos="default"), ev.DomainAliasDeleted(alias="a.example", domain="a.example"),
              ev.CosCreated(name="gold", limits={}), ev.AccountCreated(address="x@a.example", domain="a.example", name="x")]

    async def both():
        return await keys.seal_creations(events), [await keys.seal([e]) for e in events]

    bulk, one_by_one = asyncio.run(both())
    assert bulk == one_by_one and [s.events[0] for s in bulk] == events
