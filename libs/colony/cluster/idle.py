"""A workload for a service whose protocol work is not wired in yet.

It has no sessions, so it drains at once; the instance still joins the cluster, heartbeats,
obeys drain/ready and serves its ops listener, which is exactly the work it does have.
"""

from __future__ import annotations


class ListenerlessWorkload:
    def __init__(self, role: str) -> None:
        self.role = role
        self.accepting = True

    async def start(self, runtime) -> dict[str, str]:
        return {}

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    def active_work(self) -> int:
        return 0

    async def hand_over(self) -> None:
        return None

    async def stop(self) -> None:
        return None
