"""The admin-api process's start must not hold the event loop: the node registers and starts
its heartbeat before the workload starts, and a controller declares an instance FAILED after
node_ttl (5 s) without one.  Importing the app (FastAPI, SQLAlchemy, every route) took 4-6 s
on a loaded 2-core machine, so it happens when the service module is imported, before the
loop runs -- checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_the_app_is_imported_with_the_service_module_not_in_start():
    code = ("import sys\n"
            "import colony_admin.service\n"
            "heavy = ['colony_admin.app', 'colony_admin.routes.cluster', 'colony_admin.monitor.routes', 'fastapi']\n"
            "print(' '.join(m for m in heavy if m not in sys.modules))\n")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert missing == []
