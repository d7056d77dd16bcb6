"""Foldering: the sub-directories the seed puts between a domain and its accounts (and
between ``SharedDomains`` and its domains), so no directory holds tens of thousands of entries.

A method is a list of prefix lengths written ``"1-1"``: each level takes the next *n*
characters of the name, so for ``jsmith``

* ``"1"``   -> ``j.sub/``
* ``"1-1"`` -> ``j.sub/s.sub/``
* ``"2-1"`` -> ``js.sub/m.sub/`` (the seed's third example)
* ``"2-2"`` -> ``js.sub/mi.sub/``
* ``"none"`` (or ``""``) -> no foldering.

A name shorter than the method asks for is padded with ``_`` (``"1-1"`` on ``a`` gives
``a.sub/_.sub/``), so every account of a domain sits at the same depth.  Characters that
cannot be a path element are written as ``%xx`` (see ``path_element``).
"""

from __future__ import annotations

import re

SUB_SUFFIX = ".sub"
_PAD = "_"
_METHOD_RE = re.compile(r"^[1-9](-[1-9]){0,3}$")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.+=")


class FolderingError(ValueError):
    pass


def parse_method(method: str | None) -> tuple[int, ...]:
    """``"2-1"`` -> (2, 1); ``"none"``/``""``/None -> ()."""
    if method is None or method in ("", "none", "0"):
        return ()
    if not _METHOD_RE.match(method):
        raise FolderingError(f"foldering method {method!r}: expected 'none' or digits 1-9 joined by '-', e.g. '1-1'")
    return tuple(int(p) for p in method.split("-"))


def path_element(name: str) -> str:
    """A name as one safe path element: lower case, ``[a-z0-9-_.+=]`` kept, any other UTF-8
    byte written ``%xx``; never ``.``/``..`` and never empty.  Injective on lower-case names."""
    out = []
    for ch in name.lower():
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02x}" for b in ch.encode())
    element = "".join(out)
    if element in ("", ".", ".."):
        element = "".join(f"%{b:02x}" for b in element.encode()) or "%"
    return element


def folders(name: str, method: str | tuple[int, ...] | None) -> list[str]:
    """The ``x.sub`` directories for ``name`` under ``method``, outermost first."""
    lengths = parse_method(method) if not isinstance(method, tuple) else method
    base = name.lower()
    out, pos = [], 0
    for n in lengths:
        chunk = base[pos:pos + n]
        chunk = chunk + _PAD * (n - len(chunk))
        out.append(path_element(chunk) + SUB_SUFFIX)
        pos += n
    return out


def domain_method(levels: int | bool | None) -> tuple[int, ...]:
    """Domain-level foldering: ``c.sub/`` (1 level) or ``c.sub/o.sub/`` (2 levels) before the domain."""
    n = int(levels or 0)
    if n < 0 or n > 4:
        raise FolderingError(f"domain foldering levels {n}: expected 0 to 4")
    return (1,) * n
