"""Debian tools the tests drive as real peers: present, skipped with the reason on a
developer's machine without them, a failure in CI (``.ci/apt-packages`` installs them)."""

from __future__ import annotations

import os
import shutil

import pytest


def need_tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        package = package or name
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI (apt-get install {package}; listed in .ci/apt-packages)")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path
