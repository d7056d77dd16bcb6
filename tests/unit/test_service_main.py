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
