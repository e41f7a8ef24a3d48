"""What must not be shown: the ids in errors a user session provokes, and the passwords in statements.

Passwords (``CREATE USER u PASSWORD = '...'``, ``ALTER USER u SET PASSWORD = '...'``) are masked by
:func:`mask_secrets` wherever a statement's text is echoed: syntax errors, the shell's history.

The session's macros (``complete``, ``finetune``, ...) pass the session's id to duckdb-ft's functions, and DuckDB
expands a macro before it binds: its errors quote the expanded text (``complete('m', 'p').x`` is refused with
``__ft_complete('m', 'p', '<the session id>')`` in the message). Every error a user session's connection raises
goes through :func:`hide_ids`, which replaces the session's id and its engine's id by ``<hidden>``, whatever the
error, so no message a user can provoke carries one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from .engine import Session

HIDDEN = "<hidden>"
MASK = "'***'"
_AFTER_PASSWORD = re.compile(r"(?is)(\bpassword\b).*")


def mask_secrets(sql: str) -> str:
    """``sql`` with the value after each PASSWORD (and every string literal after it in its statement) replaced
    by ``'***'``; text that cannot be tokenized loses everything after the word PASSWORD."""
    if not isinstance(sql, str) or "password" not in sql.lower():
        return sql
    from sqlglot.dialects.duckdb import DuckDB

    try:
        tokens = DuckDB().tokenize(sql)
    except Exception:  # an unterminated quote, ...: keep nothing after the word
        return _AFTER_PASSWORD.sub(r"\1 " + MASK, sql)
    out, pos, armed, value_next = [], 0, False, False
    for tok in tokens:
        kind = tok.token_type.name
        if kind == "SEMICOLON":
            armed = value_next = False
        elif kind not in ("STRING", "IDENTIFIER") and tok.text.upper() == "PASSWORD":
            armed = value_next = True
            continue
        elif armed and kind == "EQ":
            continue
        elif armed and (value_next or kind == "STRING"):
            out.append(sql[pos:tok.start] + MASK)
            pos, value_next = tok.end + 1, False
            continue
        value_next = False
    return "".join(out) + sql[pos:]


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
