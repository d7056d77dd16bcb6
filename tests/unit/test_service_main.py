"""What every service does at start before its node runs: the open-descriptor limit."""

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
