"""Where an account lives on shared storage: the seed's ``SharedDomains`` layout.

Pure path computation, no I/O except in ``locate``::

    <root>/SharedDomains/[c.sub/[o.sub/]]company.com/[j.sub/[s.sub/]]jsmith.macnt/

* **Domain-level foldering** (``domain_levels``): ``c.sub/`` or ``c.sub/o.sub/`` before the
  domain directory.
* **Account-level foldering** (``account_foldering``, see ``colony.storage.foldering``).
* **Fast storage** (``fast_storage_index`` N, off when None): ``account.settings`` and
  ``account.info`` move out of the ``.macnt`` directory to a tree rooted at a ``fast``
  element inserted after the N-th path element below ``SharedDomains`` (the domain folders,
  the domain, the account folders), and the ``name.macnt`` element is replaced by the file
  names ``name.settings``/``name.info``.  With N=1 and no domain foldering that is the seed's
  ``SharedDomains/company.com/fast/a.sub/albert.settings``; N=0 puts ``fast`` directly under
  ``SharedDomains`` (the seed's ``SharedDomains/fast/company.com/a.sub/l.sub/albert.settings``
  example, which its text calls index 1: we follow the rule the seed states, "inserts ``fast``
  after the Nth path element", and its first example).  An operator mounts an SSD volume
  at that ``fast`` directory.

A domain's layout comes from provisioning (``DomainCreated.storage`` / the directory's domain
entry: ``account_foldering``, ``domain_foldering`` (bool or levels), ``fast_storage_index``).
While a domain's layout is being switched, ``locate`` finds each account under the new
layout or, not yet moved, under the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colony.storage.foldering import domain_method, folders, parse_method, path_element

SHARED_DOMAINS = "SharedDomains"
ACCOUNT_SUFFIX = ".macnt"
FAST = "fast"
SETTINGS_FILE = "account.settings"
INFO_FILE = "account.info"


@dataclass(frozen=True)
class StorageLayout:
    """One domain's storage settings (the admin API's ``StorageLayout``)."""

    account_foldering: str = "none"
    domain_levels: int = 0
    fast_storage_index: int | None = None

    def __post_init__(self) -> None:
        parse_method(self.account_foldering)  # fail early, naming the method
        domain_method(self.domain_levels)

    @classmethod
    def from_provisioning(cls, storage: dict[str, Any] | None) -> StorageLayout:
        storage = storage or {}
        levels = storage.get("domain_foldering", 0)
        return cls(
            account_foldering=str(storage.get("account_foldering") or "none"),
            domain_levels=int(levels) if not isinstance(levels, bool) else int(levels),
            fast_storage_index=storage.get("fast_storage_index"),
        )


@dataclass(frozen=True)
class AccountPaths:
    """Every path of one account under one layout."""

    account_dir: Path        # .../jsmith.macnt
    settings_file: Path      # account.settings (in the .macnt or under fast/)
    info_file: Path          # account.info

    @property
    def mail_dir(self) -> Path:
        """The account's mailboxes: journal segments, snapshots, bodies."""
        return self.account_dir / "mail"


def domain_dir(root: Path, domain: str, layout: StorageLayout) -> Path:
    elements = folders(domain, domain_method(layout.domain_levels)) + [path_element(domain)]
    return Path(root, SHARED_DOMAINS, *elements)


def account_paths(root: Path, domain: str, name: str, layout: StorageLayout) -> AccountPaths:
    account = path_element(name)
    above = folders(domain, domain_method(layout.domain_levels)) + [path_element(domain)]
    above += folders(name, layout.account_foldering)
    account_dir = Path(root, SHARED_DOMAINS, *above, account + ACCOUNT_SUFFIX)
    n = layout.fast_storage_index
    if n is None:
        return AccountPaths(account_dir, account_dir / SETTINGS_FILE, account_dir / INFO_FILE)
    n = min(n, len(above))
    fast_dir = Path(root, SHARED_DOMAINS, *above[:n], FAST, *above[n:])
    return AccountPaths(account_dir, fast_dir / f"{account}.settings", fast_dir / f"{account}.info")


ACCOUNT_METHODS = ("none", "1", "1-1", "2-1", "2-2")


def candidate_layouts(current: StorageLayout) -> list[StorageLayout]:
    """Every layout an account may still be under after a switch was interrupted: the
    current one first, then each combination of foldering (same fast-storage index)."""
    out = [current]
    for levels in (0, 1, 2):
        for method in ACCOUNT_METHODS:
            layout = StorageLayout(method, levels, current.fast_storage_index)
            if layout not in out:
                out.append(layout)
    return out


def find_account(root: Path, domain: str, name: str, current: StorageLayout) -> tuple[AccountPaths, StorageLayout] | None:
    """Where the account's directory is, under any layout (current first); None if nowhere."""
    for layout in candidate_layouts(current):
        paths = account_paths(root, domain, name, layout)
        if paths.account_dir.is_dir():
            return paths, layout
    return None


def locate(root: Path, domain: str, name: str, current: StorageLayout,
           previous: StorageLayout | None = None) -> tuple[AccountPaths, bool]:
    """The account's paths and whether it exists there: under ``current`` if its directory is
    there (or ``previous`` is None), else under ``previous`` if it is there (a move not yet
    done), else under ``current`` (a new account is created in the new layout)."""
    new = account_paths(root, domain, name, current)
    if new.account_dir.is_dir() or previous is None:
        return new, new.account_dir.is_dir()
    old = account_paths(root, domain, name, previous)
    if old.account_dir.is_dir():
        return old, True
    return new, False
