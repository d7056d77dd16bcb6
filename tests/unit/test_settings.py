import pytest

from colony.settings import ConfigError, load_settings


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("COLONY_NODE_TTL", "7.5")
    assert load_settings().node_ttl == 7.5


def test_bad_value_names_the_key(monkeypatch):
    monkeypatch.setenv("COLONY_NODE_TTL", "soon")
    with pytest.raises(ConfigError, match="COLONY_NODE_TTL"):
        load_settings()


def test_bad_nats_url_says_how_to_write_one(monkeypatch):
    monkeypatch.setenv("COLONY_NATS_URL", "localhost:4222")
    with pytest.raises(ConfigError, match="nats://host:port"):
        load_settings()


def test_toml_file_and_unknown_keys(tmp_path, monkeypatch):
    conf = tmp_path / "colony.toml"
    conf.write_text('heartbeat_interval = 2.0\nlog_level = "debug"\n')
    monkeypatch.setenv("COLONY_CONFIG", str(conf))
    s = load_settings()
    assert s.heartbeat_interval == 2.0 and s.log_level == "DEBUG"
    conf.write_text("hartbeat_interval = 2.0\n")
    with pytest.raises(ConfigError, match="hartbeat_interval"):
        load_settings()


def test_missing_config_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("COLONY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings()


def test_safety_margin_shorter_than_lease_is_checked():
    from colony.cluster.lease import Lease

    with pytest.raises(ValueError):
        Lease(kv=None, key="k", holder="me", ttl=1.0, safety_margin=1.0)


def test_outbound_deny_networks_name_the_key_and_the_bad_entry(monkeypatch):
    monkeypatch.setenv("COLONY_OUTBOUND_DENY_NETWORKS", "169.254.0.0/16, inner-net")
    with pytest.raises(ConfigError, match="COLONY_OUTBOUND_DENY_NETWORKS.*'inner-net'"):
        load_settings()


@pytest.mark.parametrize("env, keys", [
    ({"COLONY_ACCOUNT_LEASE_TTL": "10", "COLONY_ACCOUNT_LEASE_SAFETY_MARGIN": "20"},
     ("COLONY_ACCOUNT_LEASE_SAFETY_MARGIN", "COLONY_ACCOUNT_LEASE_TTL")),
    ({"COLONY_CONTROLLER_LEASE_TTL": "2", "COLONY_CONTROLLER_SAFETY_MARGIN": "2"},
     ("COLONY_CONTROLLER_SAFETY_MARGIN", "COLONY_CONTROLLER_LEASE_TTL")),
    ({"COLONY_REGION": "ap", "COLONY_REGIONS": "eu,us"}, ("COLONY_REGION", "COLONY_REGIONS")),
    ({"COLONY_REGION": "eu", "COLONY_REGIONS": "eu,us", "COLONY_PRIMARY_REGION": "ap"},
     ("COLONY_PRIMARY_REGION", "COLONY_REGIONS")),
])
def test_settings_that_contradict_each_other_are_a_config_error_at_load(monkeypatch, env, keys):
    """Each of these used to load and fail later -- a traceback when the mail store or the
    controller made its lease, or only where stream configurations were computed -- instead of
    the one configuration error a service prints before it starts (exit 2)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert all(key in message for key in keys), message
    assert "COLONY_?" not in message


def test_a_mail_store_with_a_margin_past_its_lease_stops_as_a_config_error(monkeypatch, capsys):
    from colony.cluster.service_main import run_service

    monkeypatch.setenv("COLONY_ACCOUNT_LEASE_SAFETY_MARGIN", "20")
    with pytest.raises(SystemExit) as exit_:
        run_service("mailstore", lambda settings: pytest.fail("the workload was made"))
    assert exit_.value.code == 2
    assert "COLONY_ACCOUNT_LEASE_SAFETY_MARGIN" in capsys.readouterr().err


def test_an_empty_path_setting_is_unset(monkeypatch, tmp_path):
    """`COLONY_TLS_SNI_DIR=` (a compose file's blank line) was read as the path `.`: the
    working directory's *.pem served as per-domain certificates, `COLONY_STORAGE_DIR=` put the
    shared storage there, and an empty COLONY_CLUSTER_SECRET_FILE sent every edge to read a
    directory.  Each optional path's description calls empty "not set", and so it is."""
    from pathlib import Path

    from colony.settings import Settings

    optional_paths = [name for name, field in Settings.model_fields.items() if field.annotation == Path | None]
    assert {"tls_sni_dir", "storage_dir", "cluster_secret_file", "srs_secret_file"} <= set(optional_paths)
    for name in optional_paths:
        monkeypatch.setenv(f"COLONY_{name.upper()}", " " if name == "storage_dir" else "")
    monkeypatch.setenv("COLONY_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert all(getattr(settings, name) is None for name in optional_paths)
    assert settings.shared_storage == tmp_path / "storage"
    monkeypatch.setenv("COLONY_DNS_SERVERS", "")        # an empty string setting stays a string
    assert load_settings().dns_servers == ""
