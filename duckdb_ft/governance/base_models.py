"""Which base models a session may name: built-in ones for every role, folders and hub ids through the catalog.

A base model outside the catalog is a folder on the database's machine or a hub id (which downloads when online):
its weights are whatever lies there, and the errors of looking for it (no such folder, no ``config.json``, ``~``,
``../``) tell which folders exist. So a non-administrator session may name only:

- a built-in base model (``smollm2-135m``), as before;
- a base model the administrator registered (``CREATE BASE MODEL corp_llama FROM '/models/llama'`` or
  ``FROM 'org/name'``) and granted (``GRANT USAGE ON BASE MODEL corp_llama TO ROLE r``): the name resolves to
  the registered folder or hub id (which a job and its model record as their ``base_model``); that source, named
  exactly as registered, is the same base model.

Any other name is refused with one error that says nothing of the filesystem, before anything looks at it
(:func:`base_model_for`). The administrator may name any folder or hub id, as in embedded single-user use.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable

from .. import catalog
from ..errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied

if TYPE_CHECKING:
    from ..surface.engine import Session

KIND = "BASE MODEL"
_NAME = re.compile(r"[a-z_][a-z0-9_$-]{0,62}")


def registered(cur: Any, name: str) -> str | None:
    """The folder or hub id registered under ``name``, or None."""
    found = _lookup(cur, "name = ?", name.lower())
    return found[0][1] if found else None


def _lookup(cur: Any, where: str, value: str) -> list[tuple[str, str]]:
    try:
        return cur.execute(f"SELECT name, source FROM {catalog.SCHEMA}.base_models WHERE {where} ORDER BY name",
                           [value]).fetchall()
    except Exception:  # a catalog without the table (read-only, outdated): nothing is registered
        return []


def denied(session: Session, name: str) -> PermissionDenied:
    """The one error of a base model a session may not name: missing, a folder, a hub id, not granted."""
    return PermissionDenied.of("USAGE", "BASE MODEL", name, session.role, reason="it does not exist or USAGE is "
                               "required", hint="SHOW BASE MODELS lists the base models you may use")


def base_model_for(session: Session | None, cur: Any, name: Any, builtin: Iterable[str]) -> Any:
    """What ``name`` (not a fine-tuned model) resolves through for this session: the registered folder or hub id
    of a registered name, else ``name`` itself, for a built-in model or for the administrator.

    Raises:
        PermissionDenied: a non-administrator names anything else (:func:`denied`), or a registered base model
            without USAGE on it.
    """
    if not isinstance(name, str) or not name.strip():
        return name  # the caller's own error for an empty name
    key = name.strip()
    source = registered(cur, key) if _NAME.fullmatch(key.lower()) else None
    if session is None or session.is_admin:
        return source if source is not None else name
    if source is not None:
        if not session.checker().has("USAGE", KIND, key.lower()):
            raise denied(session, key)
        return source
    if key.lower() in {b.lower() for b in builtin}:
        return name
    check = session.checker()  # a registered source named as it is (a model's recorded base_model): its USAGE
    if any(check.has("USAGE", KIND, n) for n, _ in _lookup(cur, "source = ?", key)):
        return key
    raise denied(session, key)


#: What a non-administrator is shown for a recorded base model that is neither built in nor registered.
UNREGISTERED = "<unregistered base model>"


def shown(session: Session | None, cur: Any, recorded: Any, builtin: Iterable[str] = ()) -> Any:
    """What ``session`` is shown of a recorded ``base_model`` (a job's, a model version's, an evaluation's): the
    administrator the folder or hub id itself; any other role a built-in name as it is, a registered source as its
    registered name (one the role may use first), anything else as :data:`UNREGISTERED`: never a path or hub id."""
    if session is None or session.is_admin or not isinstance(recorded, str):
        return recorded
    if recorded.strip().lower() in {b.lower() for b in builtin}:
        return recorded
    names = [n for n, _ in _lookup(cur, "source = ?", recorded.strip())]
    if not names:
        return UNREGISTERED
    check = session.checker()
    usable = [n for n in names if check.has("USAGE", KIND, n)]
    return (usable or names)[0]


def shown_rows(session: Session | None, cur: Any, rows: list[dict[str, Any]], builtin: Iterable[str],
               key: str = "base_model") -> list[dict[str, Any]]:
    """Copies of ``rows`` with their ``base_model`` as :func:`shown` (the rows themselves for the administrator)."""
    if session is None or session.is_admin:
        return rows
    names = list(builtin)
    return [{**r, key: shown(session, cur, r.get(key), names)} if key in r else r for r in rows]


def create(session: Session, cur: Any, name: str, source: str, replace: bool = False,
           if_not_exists: bool = False) -> str:
    """Register a base model (the administrator only); returns a status line."""
    session.checker().require_admin("CREATE BASE MODEL")
    name = name.lower()
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"base model name {name!r}: letters, digits, _, $ and -, starting with a letter")
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument("CREATE BASE MODEL name FROM '<folder or org/name hub id>': the source is empty")
    if registered(cur, name) is not None and not replace:
        if if_not_exists:
            return f"Base model {name} exists, statement succeeded."
        raise AlreadyExists(f"base model '{name}' exists: DROP BASE MODEL {name} first, or CREATE OR REPLACE")
    with catalog.transaction(cur):
        cur.execute(f"DELETE FROM {catalog.SCHEMA}.base_models WHERE name = ?", [name])
        cur.execute(f"INSERT INTO {catalog.SCHEMA}.base_models VALUES (?, ?, ?, ?)",
                    [name, source.strip(), session.role, catalog.now_ms()])
    return f"Base model {name} created."


def drop(session: Session, cur: Any, name: str, if_exists: bool = False) -> str:
    """Unregister a base model and its grants (the administrator only); models trained on it keep working."""
    session.checker().require_admin("DROP BASE MODEL")
    name = name.lower()
    if registered(cur, name) is None:
        if if_exists:
            return f"Base model {name} does not exist, statement succeeded."
        raise NotFound(f"base model '{name}' does not exist (SHOW BASE MODELS lists them)")
    with catalog.transaction(cur):
        cur.execute(f"DELETE FROM {catalog.SCHEMA}.base_models WHERE name = ?", [name])
        cur.execute(f"DELETE FROM {catalog.SCHEMA}.grants WHERE object_kind = ? AND object_name = ?", [KIND, name])
    return f"Base model {name} dropped."


def show(session: Session, cur: Any, builtin: Iterable[str]) -> list[dict[str, Any]]:
    """The base models this session may name: built-in ones, and registered ones it has USAGE on (the
    administrator also sees each one's source)."""
    out = [{"name": b, "source": "built-in", "created_on": None} for b in sorted(builtin)]
    check = session.checker()
    for name, source, created in cur.execute(
            f"SELECT name, source, created_on FROM {catalog.SCHEMA}.base_models ORDER BY name").fetchall():
        if check.has("USAGE", KIND, name):
            out.append({"name": name, "source": source if session.is_admin else "registered",
                        "created_on": created})
    return out

