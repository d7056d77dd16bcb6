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
