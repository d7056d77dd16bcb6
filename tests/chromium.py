"""Headless chromium (Debian's chromium + chromedriver) under Selenium, as the browser tests
start it: tests/e2e/test_monitor_page.py and tests/integration/sipfarm/test_browser_phone.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tools import need_tool

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900")


def trust_ca(home: Path, ca_file: Path) -> None:
    """Make ``ca_file`` a trusted root for a chromium whose HOME is ``home``: chromium on Linux
    takes locally added roots from the user's NSS database, ``$HOME/.pki/nssdb`` (Debian's
    libnss3-tools has ``certutil``), so the browser checks the server's certificate as it
    would a public one, with no flag that switches checking off."""
    certutil = need_tool("certutil", "libnss3-tools")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    subprocess.run([certutil, "-A", "-d", f"sql:{db}", "-t", "C,,", "-n", "test CA", "-i", str(ca_file)],
                   check=True, capture_output=True)


@contextlib.contextmanager
def chromium(profile: Path, home: Path | None = None):
    """A Selenium driver on a headless chromium with its own profile directory; ``home`` is
    its HOME (where ``trust_ca`` put the NSS database), else the test process's."""
    binary = need_tool("chromium")
    driver_path = need_tool("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    env = None if home is None else {**os.environ, "HOME": str(home)}
    driver = webdriver.Chrome(service=Service(driver_path, env=env), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
