"""The admin API stack of tests/integration/admin, reused: the contracts are served by it.

Only the SQLite read model here (the admin suites cover PostgreSQL); the fixtures come from
the admin suite's conftest, loaded by path so the two conftest modules do not shadow each other,
and its harness module (admin_stack).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ADMIN_SUITE = Path(__file__).resolve().parent.parent / "admin"
sys.path.insert(0, str(ADMIN_SUITE))       # its harness module, admin_stack
import admin_stack  # noqa: E402

_spec = importlib.util.spec_from_file_location("admin_suite_fixtures", ADMIN_SUITE / "conftest.py")
admin = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = admin
_spec.loader.exec_module(admin)

nats_url = admin.nats_url
make_stack = admin.make_stack
stack = admin.stack


@pytest.fixture
def databases(request, tmp_path):
    factory = admin_stack.DatabaseFactory("sqlite", tmp_path, request)
    yield factory
    factory.drop_all()


@pytest.fixture
def connect_bus():
    """``await connect_bus(nats_url)``: a connection that may do anything on the suite's bus
    (the admin suite's ``connect``, which knows how that bus authenticates)."""
    return admin_stack.connect
