"""`colony up --monitoring`: a real Prometheus (Debian's ``prometheus``) scraping the cluster.

Theory of operation.  Prometheus finds the instances through file-based service discovery
(``file_sd_configs``): ``targets.json`` in its directory lists every live instance's ops
listener (``/metrics``), labelled ``job="colony-<role>"`` (the same jobs as the compose
file's Prometheus, so one set of dashboards fits both) and nothing else: the instances'
own gauges carry ``node`` and ``role`` (of the node they describe), which target labels of
the same name would rename to ``exported_*``.  ``colony up``
rewrites that file whenever the ``NODES`` bucket changes -- an instance started elsewhere
with ``colony run`` joins by itself, one that stops or fails leaves -- and Prometheus
notices the new file (inotify, and ``refresh_interval``) without a restart.  The file is
replaced atomically (write, then rename), so Prometheus never reads half of it.

``targets_for`` is the pure part (node views in, file content out); ``Prometheus`` is the
process and its files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from colony.cluster.membership import LIVE_STATES
from colony.cluster.view import NodeView

SCRAPE_INTERVAL = "5s"  # a local cluster: quick feedback matters more than sample volume

CONFIG = """\
# Written by `colony up --monitoring`; targets come from targets.json (file-based discovery).
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
  external_labels:
    cluster: colony

scrape_configs:
  - job_name: colony
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 5s
  - job_name: prometheus
    static_configs:
      - targets: ["{self_address}"]
"""


class MonitoringError(RuntimeError):
    pass


def targets_for(views: Iterable[NodeView]) -> list[dict]:
    """The file_sd content: one group per live instance with an ops listener."""
    groups = []
    for v in sorted(views, key=lambda v: v.id):
        address = v.addresses.get("ops")
        if address and v.state in LIVE_STATES:
            groups.append({"targets": [address], "labels": {"job": f"colony-{v.role}"}})
    return groups


class Prometheus:
    def __init__(self, directory: Path, host: str, port: int) -> None:
        self.directory, self.host, self.port = directory, host, port
        self.process: subprocess.Popen | None = None
        self._written: list[dict] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.directory / "targets.json"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise MonitoringError("--monitoring needs Prometheus: apt-get install prometheus (or put it on PATH)")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.update([])
        config = self.directory / "prometheus.yml"
        config.write_text(CONFIG.format(interval=SCRAPE_INTERVAL, targets=self.targets_file,
                                        self_address=f"{self.host}:{self.port}"))
        log = open(self.directory / "prometheus.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=2d"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def update(self, groups: list[dict]) -> bool:
        """Replace the targets file if they changed; True when it was written."""
        if groups == self._written:
            return False
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        os.replace(tmp, self.targets_file)
        self._written = groups
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
