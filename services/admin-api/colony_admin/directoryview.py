"""The read model as a ``colony.contracts.recipients.DirectoryView``: the admin API answers
``colony.dir.recipients`` with the same pure resolver an edge runs on its cache.

Synchronous (the resolver is): use it inside ``asyncio.to_thread`` with one connection per
request.  Each name is read at most once per request (a small memo), so an alias fanning out
to many accounts of one domain reads that domain once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from colony.contracts.directory import AccountInfo, AliasInfo, DomainInfo
from colony_admin import db

_MISSING = object()


class SqlDirectoryView:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._memo: dict[tuple[str, str], Any] = {}

    def _once(self, kind: str, name: str, load) -> Any:
        hit = self._memo.get((kind, name), _MISSING)
        if hit is _MISSING:
            hit = self._memo[(kind, name)] = load(name)
        return hit

    def domain(self, name: str) -> DomainInfo | None:
        return self._once("domain", name, self._domain)

    def domain_alias(self, name: str) -> str | None:
        return self._once("domain_alias", name, self._domain_alias)

    def address(self, address: str) -> AccountInfo | AliasInfo | None:
        return self._once("address", address, self._address)

    def cos(self, name: str) -> dict | None:
        return self._once("cos", name, self._cos)

    def _domain(self, name: str) -> DomainInfo | None:
        t = db.domains.c
        row = self.conn.execute(select(t.name, t.state, t.home_region, t.cos, t.dmarc_enforcement, t.move_phase,
                                       t.move_target).where(t.name == name)).first()
        if row is None:
            return None
        moving = row.move_phase is not None and row.move_phase not in ("done", "cancelled")
        return DomainInfo(row.name, row.state, row.home_region or "", row.cos, row.dmarc_enforcement,
                          row.move_phase if moving else None, (row.move_target or "") if moving else "")

    def _domain_alias(self, name: str) -> str | None:
        t = db.domain_aliases.c
        return self.conn.execute(select(t.domain).where(t.name == name)).scalar()

    def _address(self, address: str) -> AccountInfo | AliasInfo | None:
        a = db.accounts.c
        row = self.conn.execute(select(a.address, a.state, a.cos, a.quota_bytes, a.services, a.forwarding,
                                       a.forward_keep_copy).where(a.address == address)).first()
        if row is not None:
            return AccountInfo(row.address, row.state, row.cos, row.quota_bytes,
                               tuple(row.services) if row.services is not None else None,
                               tuple(row.forwarding or ()), bool(row.forward_keep_copy))
        t = db.aliases.c
        targets = self.conn.execute(select(t.targets).where(t.address == address)).scalar()
        return AliasInfo(address, tuple(targets)) if targets is not None else None

    def _cos(self, name: str) -> dict | None:
        t = db.classes_of_service.c
        return self.conn.execute(select(t.limits).where(t.name == name)).scalar()
