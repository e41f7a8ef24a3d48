"""Errors a user session provokes, with duckdb-ft's ids taken out.

The session's macros (``complete``, ``finetune``, ...) pass the session's id to duckdb-ft's functions, and DuckDB
expands a macro before it binds: its errors quote the expanded text (``complete('m', 'p').x`` is refused with
``__ft_complete('m', 'p', '<the session id>')`` in the message). Every error a user session's connection raises
goes through :func:`hide_ids`, which replaces the session's id and its engine's id by ``<hidden>``, whatever the
error, so no message a user can provoke carries one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from .engine import Session

HIDDEN = "<hidden>"


def hide_ids(error: BaseException, session: Session | None) -> BaseException | None:
    """``error`` again (same class) with the ids of ``session`` and its engine replaced; None when it holds none
    or the session is the administrator's."""
    if session is None or getattr(session, "user", None) is None or not isinstance(error, duckdb.Error):
        return None
    text = str(error)
    ids = [i for i in (getattr(session, "id", None), getattr(session.engine, "id", None)) if i]
    if not any(i in text for i in ids):
        return None
    for i in ids:
        text = text.replace(i, HIDDEN)
    try:
        return type(error)(text)
    except Exception:  # a class that takes other arguments: DuckDB's base class keeps the message
        return duckdb.Error(text)
