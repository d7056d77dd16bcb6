"""The grant table turned into NATS permissions, and the identities behind them (no server)."""

from __future__ import annotations

import stat

from colony.bus import names
from colony.bus.permissions import authorization_config, generate_identities, permissions_for
from colony.bus.secrets import init_bus


def allowed(role: str) -> tuple[set[str], set[str]]:
    perms = permissions_for(names.GRANTS[role], "UKEY")
    return set(perms["publish"]["allow"]), set(perms["subscribe"]["allow"])


def test_every_role_of_the_supervisor_has_a_grant():
    from colony.supervisor import ROLE_MODULES

    assert set(ROLE_MODULES) <= set(names.GRANTS)
    assert names.GRANTS[names.ROLE_OPERATOR].everything


def test_a_grant_becomes_the_jetstream_subjects_it_needs_and_no_more():
    publish, subscribe = allowed("edge")
    assert names.SUBJECTS_MAIL in publish
    assert f"$KV.{names.BUCKET_RATE_COUNTERS}.>" in publish           # a bucket it writes
    assert f"$JS.API.DIRECT.GET.KV_{names.BUCKET_DIRECTORY}.>" in publish  # a bucket it reads
    assert f"$KV.{names.BUCKET_DIRECTORY}.>" not in publish
    assert f"$JS.API.CONSUMER.MSG.NEXT.{names.STREAM_OUTBOUND}.*" in publish  # its work queue
    assert f"$JS.API.STREAM.MSG.DELETE.{names.STREAM_OUTBOUND}" in publish
    assert not any(names.STREAM_PROVISIONING in s or s.startswith("colony.prov") for s in publish)
    assert names.AUTH_SIP_CREDENTIALS not in publish
    assert not any(s.startswith("$JS.API.STREAM.CREATE") or s.startswith("$JS.API.STREAM.DELETE") for s in publish)
    assert subscribe == {"_INBOX.UKEY.>", names.NODE_COMMANDS}


def test_only_controllers_manage_the_schema_and_write_the_lease():
    for role in names.GRANTS:
        if role == names.ROLE_OPERATOR:
            continue
        publish, _ = allowed(role)
        assert ("$JS.API.STREAM.CREATE.*" in publish) == (role == "controller"), role
        assert (f"$KV.{names.BUCKET_LEASES}.>" in publish) == (role == "controller"), role
        assert (names.SUBJECTS_PROVISIONING in publish) == (role == "admin-api"), role


def test_identities_are_secret_files_and_kept(tmp_path):
    first = generate_identities(tmp_path / "bus")
    assert stat.S_IMODE((tmp_path / "bus").stat().st_mode) == 0o700
    for identity in first.values():
        assert stat.S_IMODE(identity.seed_file.stat().st_mode) == 0o600
        assert identity.public_key.startswith("U")
    again = generate_identities(tmp_path / "bus")
    assert {r: i.public_key for r, i in again.items()} == {r: i.public_key for r, i in first.items()}
    config = authorization_config(first)
    assert all(i.public_key in config for i in first.values())
    assert all(i.seed_file.read_text().strip() not in config for i in first.values())


def test_bus_init_writes_keys_only_its_owner_can_read(tmp_path):
    files = init_bus(tmp_path / "secrets", ["nats-1", "nats-2"])
    for secret in (files.key, tmp_path / "secrets" / "ca.key", files.auth_conf):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"nats-1", "nats-2", "localhost"} <= set(sans)


def test_a_domain_moves_question_is_passed_on_between_a_regions_mail_stores_only():
    publish, subscribe = allowed("mailstore")
    assert names.MAILSTORE_MOVE in publish and names.MAILSTORE_MOVE in subscribe
    assert names.mailstore_move_subject("mailstore-2", names.MOVE_PULL).startswith("colony.mailstore.")
    # region-local: the prefix is denied on the leafnode links, so a peer is always of the same region
    assert any(names.MAILSTORE_MOVE.startswith(p.removesuffix(">")) for p in names.REGION_LOCAL_SUBJECTS)
    for role in ("edge", "controller", "sipfarm", "admin-api"):
        publish, subscribe = allowed(role)
        assert names.MAILSTORE_MOVE not in publish | subscribe, role


def test_a_seed_path_that_cannot_be_read_is_not_called_a_bad_seed(tmp_path):
    """A directory (or a file the service's user may not read) was reported as "not an nkey
    seed (IsADirectoryError); use a file written by `colony bus init`": the seed was blamed for
    what the path was."""
    import pytest

    from colony.bus.connection import connect_options
    from colony.settings import ConfigError

    with pytest.raises(ConfigError) as info:
        connect_options(tmp_path)
    message = str(info.value)
    assert message.startswith(f"COLONY_NATS_NKEY_SEED_FILE={tmp_path}: cannot read it (Is a directory)"), message
    assert "not an nkey seed" not in message
