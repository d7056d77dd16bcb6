"""What every service process does around its node: the open-descriptor limit, the stop backstop."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_a_service_lifts_its_descriptor_limit_to_the_hard_limit():
    """A soft limit of 1024 (a shell's, systemd's default) held a mail store to a few hundred
    open accounts.  In a child whose soft limit is lowered first, the service's start lifts
    it back to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = ("import resource\n"
            "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h))\n"
            "from colony.cluster.service_main import raise_descriptor_limit\n"
            "print(*raise_descriptor_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    soft, reported_hard, now_soft, now_hard = (int(x) for x in out)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert soft == now_soft == expected and now_hard == reported_hard == hard


def test_a_process_whose_stop_hangs_ends_itself():
    """Once asked to stop, a service process ends by itself ``exit_after`` seconds later even
    when its event loop is blocked (a hung disk, a task that swallows its cancellation): with
    `colony up` gone, nobody else would. The child blocks its loop after the stop request."""
    code = ("import asyncio, logging, time, types\n"
            "from colony.cluster.service_main import _exit_if_stop_hangs\n"
            "logging.basicConfig()\n"
            "async def main():\n"
            "    runtime = types.SimpleNamespace(node_id='edge-9', stopping=asyncio.Event())\n"
            "    watchdog = asyncio.ensure_future(_exit_if_stop_hangs(runtime, 0.5))\n"
            "    await asyncio.sleep(0)\n"
            "    runtime.stopping.set()\n"
            "    await asyncio.sleep(0.05)\n"
            "    time.sleep(60)  # the loop is stuck\n"
            "    print('not ended')\n"
            "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.returncode == 1 and "not ended" not in done.stdout
    assert "edge-9: still running 0 s after it was asked to stop; exiting now" in done.stderr


def test_a_process_that_is_not_asked_to_stop_is_not_ended():
    """The backstop only starts with a stop request."""
    code = ("import asyncio, types\n"
            "from colony.cluster.service_main import _exit_if_stop_hangs\n"
            "async def main():\n"
            "    runtime = types.SimpleNamespace(node_id='edge-9', stopping=asyncio.Event())\n"
            "    watchdog = asyncio.ensure_future(_exit_if_stop_hangs(runtime, 0.1))\n"
            "    await asyncio.sleep(1.0)\n"
            "    watchdog.cancel()\n"
            "    print('served')\n"
            "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr


def _bad_files(tmp_path):
    """(role, environment, key the error must name): one file setting that does not load."""
    import trustme

    empty, junk, short = tmp_path / "empty", tmp_path / "junk.pem", tmp_path / "short"
    empty.write_bytes(b"")
    junk.write_text("not a certificate\n")
    short.write_bytes(b"0123456789")
    good = tmp_path / "good.pem"
    trustme.CA().issue_cert("edge.example").private_key_and_cert_chain_pem.write_to_path(str(good))
    sni = tmp_path / "sni"
    sni.mkdir()
    (sni / "acme.example.pem").write_text("not a certificate\n")
    return [
        ("edge", {"COLONY_CLUSTER_SECRET_FILE": str(tmp_path / "missing")}, "COLONY_CLUSTER_SECRET_FILE"),
        ("mailstore", {"COLONY_CLUSTER_SECRET_FILE": str(empty)}, "COLONY_CLUSTER_SECRET_FILE"),
        ("admin-api", {"COLONY_CLUSTER_SECRET_FILE": str(tmp_path)}, "COLONY_CLUSTER_SECRET_FILE"),
        ("edge", {"COLONY_SRS_SECRET_FILE": str(short)}, "COLONY_SRS_SECRET_FILE"),
        ("edge", {"COLONY_SRS_SECRET_FILE": str(tmp_path / "missing")}, "COLONY_SRS_SECRET_FILE"),
        ("controller", {"COLONY_NATS_NKEY_SEED_FILE": str(tmp_path / "missing")}, "COLONY_NATS_NKEY_SEED_FILE"),
        ("mailstore", {"COLONY_NATS_NKEY_SEED_FILE": str(empty)}, "COLONY_NATS_NKEY_SEED_FILE"),
        ("sipfarm", {"COLONY_NATS_TLS_CA_FILE": str(empty)}, "COLONY_NATS_TLS_CA_FILE"),
        ("edge", {"COLONY_TLS_CERT_FILE": str(junk), "COLONY_TLS_KEY_FILE": str(junk)}, "COLONY_TLS_CERT_FILE"),
        ("sipfarm", {"COLONY_TLS_CERT_FILE": str(tmp_path / "missing"), "COLONY_TLS_KEY_FILE": str(good)},
         "COLONY_TLS_CERT_FILE"),
        ("edge", {"COLONY_TLS_CERT_FILE": str(good), "COLONY_TLS_KEY_FILE": str(good), "COLONY_TLS_SNI_DIR": str(sni)},
         "COLONY_TLS_SNI_DIR"),
        ("projector", {"COLONY_DATABASE_URL_FILE": str(empty)}, "COLONY_DATABASE_URL_FILE"),
        ("edge", {"COLONY_DKIM_KEY_DIR": str(tmp_path / "no-such-dir")}, "COLONY_DKIM_KEY_DIR"),
        ("edge", {"COLONY_DKIM_KEY_DIR": str(empty)}, "COLONY_DKIM_KEY_DIR"),
    ]


def test_a_file_setting_that_does_not_load_stops_the_service_before_its_workload(tmp_path, monkeypatch, capsys):
    """A bad cluster or SRS secret stopped an edge or a mail store with a HandoffError
    traceback from the middle of its start (after it had joined the bus), and the bus and TLS
    files' own ConfigErrors came out as tracebacks the same way.  Each is now one line naming
    the key and the fix, exit code 2, before the workload is made."""
    import pytest

    from colony.cluster.service_main import run_service

    for role, env, key in _bad_files(tmp_path):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with pytest.raises(SystemExit) as exit_:
                run_service(role, lambda settings: pytest.fail(f"{role} with {env}: the workload was made"))
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert err.startswith(f"colony {role}: {key}") and err.count("\n") == 1, err


def test_a_config_error_while_the_workload_starts_is_exit_code_2(monkeypatch, capsys):
    """Files a service's own module loads in its start (the admin API's HTTPS pair, the edge's
    outbound CA bundle) raise a ConfigError from inside the event loop: that too is the one
    line and exit code 2, not a traceback."""
    import pytest

    from colony.cluster import service_main
    from colony.settings import ConfigError

    class Runtime:
        def __init__(self, settings, workload):
            self.stopping = None

        async def run(self):
            raise ConfigError("COLONY_API_TLS_CERT_FILE/COLONY_API_TLS_KEY_FILE: cannot load x; point them at y")

    monkeypatch.setattr(service_main, "NodeRuntime", Runtime)
    with pytest.raises(SystemExit) as exit_:
        service_main.run_service("admin-api", lambda settings: object())
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("colony admin-api: COLONY_API_TLS_CERT_FILE/COLONY_API_TLS_KEY_FILE: "
                                       "cannot load x; point them at y\n")
