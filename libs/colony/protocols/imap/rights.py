"""Access rights on mailboxes (RFC 4314), pure functions.

Theory of operation
-------------------
A mailbox's ACL maps an identifier to a set of rights, letters of ``lrswipkxtea``: l lookup,
r read, s keep \\Seen, w write other flags, i insert, p post, k create children, x delete
the mailbox, t set \\Deleted, e expunge, a administer.  The account's owner holds every right
on its own mailboxes whatever the ACL says, so an owner can never lock themself out.

RFC 2086's ``c`` and ``d`` are still understood (RFC 4314 §2.1.1): a ``c`` in a SETACL stands
for ``k`` and ``x``, a ``d`` for ``t`` and ``e``; in answers ``c`` is shown when ``k`` or ``x``
is held and ``d`` when ``t`` or ``e`` is (that is what ``RIGHTS=texk`` promises: the four are
granted independently).

Identifiers are addresses of the owner's own domain, or ``anyone`` -- which here means anyone
*of that domain*: sharing is a matter between colleagues, and a grant must never make mail
visible to another tenant.  Anything else is refused.

Which command needs which right (RFC 4314 §4, RFC 6851 §4.3 for MOVE) is the table
``NEEDS`` plus three rules the table cannot say:

* flags: ``\\Seen`` needs ``s``, ``\\Deleted`` needs ``t``, every other flag ``w``.  A STORE
  naming a flag the user may not change is refused whole (``NO [NOPERM]``, nothing changed:
  half a STORE would leave the client's idea of the flags wrong); APPEND and COPY/MOVE keep
  only the flags the user may set on the target and silently drop the rest (§4);
* FETCH of a body sets ``\\Seen`` only with ``s``; CLOSE expunges only with ``e``;
* a mailbox is selected read-only when the user holds none of ``s w i t e`` on it (nothing
  they could change).

A refusal must not reveal what the user may not see: without ``l`` and without the needed
right the answer is ``[NONEXISTENT]``, as for a mailbox that does not exist (§4, "the server
MUST NOT give any hint"); with ``l`` (the user can see the mailbox in LIST anyway) it is
``[NOPERM]`` naming the missing rights.
"""

from __future__ import annotations

ALL = "lrswipkxtea"
_OBSOLETE = {"c": "kx", "d": "te"}
ANYONE = "anyone"
MAX_IDENTIFIER = 254    # the longest address (RFC 5321's path limit less its brackets)
MAX_ENTRIES = 100       # per mailbox: each entry is journal state kept for the mailbox's life


class RightsError(ValueError):
    """A rights string or identifier the server cannot accept (answered ``BAD``/``NO``)."""


def parse(text: str) -> tuple[str, frozenset[str]]:
    """``"+lr"`` -> ``("+", {"l","r"})``; the mode is ``+``, ``-`` or ``=`` (replace)."""
    mode = "="
    if text[:1] in ("+", "-"):
        mode, text = text[0], text[1:]
    out: set[str] = set()
    for ch in text.lower():
        if ch in ALL:
            out.add(ch)
        elif ch in _OBSOLETE:
            out.update(_OBSOLETE[ch])
        else:
            raise RightsError(f"Unknown right {ch!r}")
    return mode, frozenset(out)


def apply(current: str, text: str) -> str:
    """The rights after a SETACL of ``text`` on ``current``, canonical order."""
    mode, rights = parse(text)
    have = set(current)
    new = rights if mode == "=" else (have | rights if mode == "+" else have - rights)
    return canonical(new)


def canonical(rights) -> str:
    return "".join(ch for ch in ALL if ch in rights)


def show(rights: str) -> str:
    """Rights as answered (GETACL, MYRIGHTS): with RFC 2086's ``c``/``d`` for old clients."""
    out = canonical(rights)
    if "k" in rights or "x" in rights:
        out += "c"
    if "t" in rights or "e" in rights:
        out += "d"
    return out


def check_identifier(identifier: str, owner: str) -> str:
    """The identifier normalised (lower case), or ``RightsError`` if it is not one of
    the owner's domain or ``anyone``."""
    ident = identifier.strip()
    if len(ident) > MAX_IDENTIFIER:
        raise RightsError("Identifier too long")
    if ident.lower() == ANYONE:
        return ANYONE
    if ident.startswith("-"):
        raise RightsError("Negative rights are not supported")
    local, at, domain = ident.rpartition("@")
    owner_domain = owner.rpartition("@")[2].lower()
    if not at or not local or domain.lower() != owner_domain:
        raise RightsError(f"Only addresses of {owner_domain} can be granted rights")
    return ident.lower()    # accounts are named in lower case everywhere in Colony


# RFC 4314 §4: the rights each command needs on the mailbox it names (CREATE: on the parent
# of the new name; RENAME: ``x`` on the old name and ``k`` on the new name's parent; COPY and
# MOVE: on the target, and MOVE also ``MOVE_SOURCE`` on the selected mailbox; FETCH, SEARCH
# and the rest of the selected state were checked by SELECT's ``r``).
NEEDS = {
    "SELECT": "r", "EXAMINE": "r", "STATUS": "r",
    "CREATE": "k", "DELETE": "x", "RENAME": "x",
    "APPEND": "i", "COPY": "i", "MOVE": "i",
    "EXPUNGE": "e", "UID EXPUNGE": "e",
    "SETACL": "a", "DELETEACL": "a", "GETACL": "a", "LISTRIGHTS": "a",
    "LIST": "l", "LSUB": "l",
}
MOVE_SOURCE = "te"       # RFC 6851 §4.3: a MOVE deletes and expunges on the source
WRITABLE = "swite"       # holding none of these on a mailbox makes its SELECT read-only


def flag_right(flag: str) -> str:
    """The right that setting or clearing ``flag`` needs."""
    lowered = flag.lower()
    if lowered == "\\seen":
        return "s"
    if lowered == "\\deleted":
        return "t"
    return "w"


def refused_flags(held: str, flags) -> list[str]:
    """The flags of a STORE the holder of ``held`` may not change (empty: the STORE may run)."""
    return [f for f in flags if flag_right(f) not in held]


def settable_flags(held: str, flags) -> list[str]:
    """The flags an APPEND or COPY keeps on a mailbox where ``held`` is held (§4: the rest are
    silently dropped)."""
    return [f for f in flags if flag_right(f) in held]


def refusal(held: str, needed: str) -> str | None:
    """``None`` if ``held`` covers ``needed``, else the response code and text of the ``NO``."""
    missing = [ch for ch in needed if ch not in held]
    if not missing:
        return None
    if "l" not in held:
        return "[NONEXISTENT] No such mailbox"
    return f"[NOPERM] You need the right{'s' if len(missing) > 1 else ''} {''.join(missing)} on this mailbox"


def read_only(held: str) -> bool:
    """Whether a SELECT of a mailbox with ``held`` must be read-only."""
    return not any(ch in held for ch in WRITABLE)


def effective(acl: dict[str, str], user: str, owner: str) -> str:
    """What ``user`` may do on a mailbox of ``owner`` with ``acl``."""
    if user.lower() == owner.lower():
        return ALL
    if user.rpartition("@")[2].lower() != owner.rpartition("@")[2].lower():
        return ""
    return canonical(set(acl.get(user.lower(), "")) | set(acl.get(ANYONE, "")))


__all__ = ["ALL", "ANYONE", "MAX_IDENTIFIER", "MAX_ENTRIES", "NEEDS", "MOVE_SOURCE", "WRITABLE", "RightsError", "parse",
           "apply", "canonical", "show", "check_identifier", "effective", "flag_right", "refused_flags",
           "settable_flags", "refusal", "read_only"]
