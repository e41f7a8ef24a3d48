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


def hide_passwords(error: BaseException) -> BaseException | None:
    """``error`` again (same class) with the passwords its message quotes masked (DuckDB's parser errors quote
    the statement: ``EXPLAIN CREATE USER u PASSWORD = '...'``); None when it quotes none."""
    text = str(error)
    masked = mask_secrets(text)
    if masked == text or not isinstance(error, duckdb.Error):
        return None
    try:
        return type(error)(masked)
    except Exception:  # a class that takes other arguments: DuckDB's base class keeps the message
        return duckdb.Error(masked)


def mask_secrets(sql: str) -> str:
    """``sql`` with each password replaced by ``'***'``: the value after ``PASSWORD =`` (whatever its kind) or a
    string right after ``PASSWORD``, and the string literals that follow it at once. A column named password
    (``SELECT password FROM t``) is left as it is; text that cannot be tokenized (an unterminated quote) loses
    everything after the word PASSWORD."""
    spans = secret_spans(sql)
    if spans is None:
        return _AFTER_PASSWORD.sub(r"\1 " + MASK, sql)
    out, pos = [], 0
    for start, end in spans:
        out.append(sql[pos:start] + MASK)
        pos = end
    return "".join(out) + sql[pos:]


def secret_spans(sql: str) -> list[tuple[int, int]] | None:
    """Where :func:`mask_secrets` masks ``sql``: (start, end) of each password token; None when the text cannot
    be tokenized."""
    if not isinstance(sql, str) or "password" not in sql.lower():
        return []
    from sqlglot.dialects.duckdb import DuckDB

    try:
        tokens = DuckDB().tokenize(sql)
    except Exception:  # an unterminated quote, ...
        return None
    spans, state = [], ""  # state: "word" after PASSWORD, "value" after PASSWORD =, "more" after a value
    for tok in tokens:
        kind = tok.token_type.name
        if kind not in ("STRING", "IDENTIFIER") and tok.text.upper() == "PASSWORD":
            state = "word"
        elif state == "word" and kind == "EQ":
            state = "value"
        elif state == "value" or (state in ("word", "more") and kind == "STRING"):
            spans.append((tok.start, tok.end + 1))
            state = "more"
        else:
            state = ""
    return spans


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
