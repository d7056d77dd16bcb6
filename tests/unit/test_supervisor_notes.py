"""`colony up`'s restart notices: an instance stopped by a configuration error says which key
and the fix beside the notice (restarting it cannot help until the operator acts)."""

from __future__ import annotations

import subprocess
import sys

from colony.settings import CONFIG_ERROR_EXIT
from colony.supervisor import Cluster, Instance, config_error_in


def _exited(tmp_path, script: str) -> Instance:
    log = tmp_path / "edge-1.log"
    log.write_text("2026-11-27 10:00:00,000 INFO [edge-1] colony.node: an earlier run\n" * 200)
    inst = Instance(node_id="edge-1", role="edge", env={}, log_path=log)
    with open(log, "ab") as out:
        inst.process = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    inst.process.wait(timeout=60)
    return inst


def test_a_config_error_is_told_beside_the_restart_notice(tmp_path):
    inst = _exited(tmp_path, "import sys; print('colony edge: invalid configuration:', file=sys.stderr); "
                             "print('  COLONY_TLS_CERT_FILE: no such file (got /x.pem)', file=sys.stderr); "
                             f"sys.exit({CONFIG_ERROR_EXIT})")
    cluster = Cluster(data_dir=tmp_path, base_port=6000, counts={}, instances=[inst])
    [note] = cluster.reap()
    assert note.startswith("edge-1 exited with 2: colony edge: invalid configuration: "
                           "COLONY_TLS_CERT_FILE: no such file (got /x.pem); restarting"), note


def test_any_other_exit_only_points_at_the_log(tmp_path):
    inst = _exited(tmp_path, "import sys; print('Traceback (most recent call last):'); sys.exit(1)")
    cluster = Cluster(data_dir=tmp_path, base_port=6000, counts={}, instances=[inst])
    [note] = cluster.reap()
    assert note == f"edge-1 exited with 1; restarting (see {inst.log_path})"


def test_a_log_without_the_line_or_none_at_all(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("nothing of the kind\n")
    assert config_error_in(log) == "a configuration error"
    assert "could not be read" in config_error_in(tmp_path / "missing.log")
