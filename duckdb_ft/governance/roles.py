"""Roles, grants and the privilege checks (Snowflake's model, kept in the ``duckdb_ft`` catalog).

- A session opened without a user is the administrator (role ``admin``): every check passes. The administrator
  may ``USE ROLE r`` to act as any role (and ``USE ROLE admin`` to come back).
- A user session acts as its current role: the user's DEFAULT_ROLE (CREATE USER) when it is granted to the user,
  else the user's first granted role, unless ``USE ROLE`` picked another granted one (or a token restricted the
  session to one role). A user granted the role ``admin`` is an administrator (the server's user ``admin`` is).
  A role has its own grants, those of the roles granted to it (a hierarchy), and ``public``'s.
- Objects in a schema need ``USAGE`` on the schema, then the object's privilege: ``SELECT``/``INSERT``/
  ``UPDATE``/``DELETE`` on a table or view (``ALL TABLES IN SCHEMA`` covers a schema's tables and views),
  ``USAGE`` on a model, ``CREATE MODEL``/``CREATE TABLE``/``CREATE VIEW`` on a schema. An object's owner role
  holds every privilege on it. Reading a view also needs SELECT on what the view reads: a view does not launder
  access to the tables under it.
"""

from __future__ import annotations

from typing import Any

from ..catalog import access as accessdb, users as usersdb
from ..errors import PermissionDenied

ADMIN = "admin"
PUBLIC = "public"
#: Every privilege a role may be granted, and the kinds of object it applies to (``ALL TABLES``: every table and
#: view of a schema). GRANT's grammar, its check of what applies to what, and the README's privilege table read
#: this table; ``ALL [PRIVILEGES]`` grants each privilege that applies. Adding a privilege is one entry here (and
#: the check that needs it: :meth:`Checker.require`).
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "SELECT": ("TABLE", "VIEW", "ALL TABLES"),
    "INSERT": ("TABLE", "ALL TABLES"),
    "UPDATE": ("TABLE", "ALL TABLES"),
    "DELETE": ("TABLE", "ALL TABLES"),
    "USAGE": ("SCHEMA", "MODEL", "BASE MODEL", "SEQUENCE"),
    "OWNERSHIP": ("TABLE", "VIEW", "MODEL"),
    "CREATE MODEL": ("SCHEMA",),
    "CREATE TABLE": ("SCHEMA",),
    "CREATE VIEW": ("SCHEMA",),
}
#: The kinds of object a GRANT names (``ALL TABLES IN SCHEMA s`` besides them).
OBJECT_KINDS = ("TABLE", "VIEW", "SCHEMA", "MODEL", "BASE MODEL", "SEQUENCE")


def applicable(kind: str) -> set[str]:
    """The privileges a GRANT may give on a kind of object (and ALL)."""
    return {p for p, kinds in PRIVILEGES.items() if kind in kinds} | {"ALL"}


def effective_roles(cur: Any, role: str) -> set[str]:
    """``role``, every role granted to it (transitively), and ``public``."""
    inherits: dict[str, set[str]] = {}
    for granted, kind, member in accessdb.members(cur):
        if kind == "ROLE":
            inherits.setdefault(member, set()).add(granted)
    seen, todo = {role, PUBLIC}, [role]
    while todo:
        for r in inherits.get(todo.pop(), ()):
            if r not in seen:
                seen.add(r)
                todo.append(r)
    return seen


def user_roles(cur: Any, user: str) -> list[str]:
    """Roles granted directly to a user, oldest grant first."""
    return [role for role, kind, member in accessdb.members(cur) if kind == "USER" and member == user]


def default_role(cur: Any, user: str | None) -> str:
    """The role a user's session starts with: its DEFAULT_ROLE if granted to it (as Snowflake, naming a default
    role grants nothing), else its first granted role, else ``public``; None (no user) is the administrator."""
    if user is None:
        return ADMIN
    roles = user_roles(cur, user)
    chosen = usersdb.default_role(cur, user)
    if chosen is not None and (chosen in roles or chosen == PUBLIC):
        return chosen
    return roles[0] if roles else PUBLIC


def is_granted(cur: Any, user: str, role: str) -> bool:
    """Whether ``user`` may act as ``role``: granted to it directly, or ``public``."""
    return role == PUBLIC or role in user_roles(cur, user)


class Checker:
    """The privilege checks of one session's current role, against the catalog as it is now."""

    def __init__(self, cur: Any, role: str):
        self.cur, self.role = cur, role
        self.admin = role == ADMIN
        self.roles = {ADMIN} if self.admin else effective_roles(cur, role)
        self._grants = None if self.admin else [g for g in accessdb.grants(cur) if g[0] in self.roles]

    def owns(self, kind: str, name: str) -> bool:
        return self.admin or accessdb.owner_of(self.cur, kind, name) in self.roles

    def has(self, privilege: str, kind: str, name: str) -> bool:
        if self.admin:
            return True
        for _, priv, okind, oname in self._grants:
            if priv not in (privilege, "ALL"):
                continue
            if okind == kind and oname == name:
                return True
            if kind in ("TABLE", "VIEW") and okind in ("TABLE", "VIEW") and oname == name:
                return True
            if kind in ("TABLE", "VIEW") and okind == "ALL TABLES" and oname == name.split(".", 1)[0]:
                return True
        return kind != "SCHEMA" and self.owns(kind, name)

    def require(self, privilege: str, kind: str, name: str) -> None:
        if kind != "SCHEMA" and not self.has("USAGE", "SCHEMA", name.split(".", 1)[0]) \
                and not self.owns(kind, name):
            self._deny("USAGE", "SCHEMA", name.split(".", 1)[0])
        if kind == "SCHEMA" and privilege != "USAGE" and not self.has("USAGE", "SCHEMA", name):
            self._deny("USAGE", "SCHEMA", name)
        if not self.has(privilege, kind, name):
            self._deny(privilege, kind, name)

    def require_owner(self, kind: str, name: str, action: str) -> None:
        if not self.owns(kind, name):
            raise PermissionDenied.of("OWNERSHIP", kind, name, self.role, reason=f"{action} needs OWNERSHIP")

    def require_admin(self, action: str) -> None:
        if not self.admin:
            raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, role=self.role,
                                      reason=f"{action} is for the administrator only")

    def deny(self, privilege: str, kind: str, name: str) -> None:
        """The one privilege error: ``privilege`` on ``name`` is required (whether or not it exists)."""
        self._deny(privilege, kind, name)

    def _deny(self, privilege: str, kind: str, name: str) -> None:
        raise PermissionDenied.of(privilege, kind, name, self.role)
