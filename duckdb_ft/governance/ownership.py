"""The administrator's ``CREATE TABLE/VIEW IF NOT EXISTS`` over an object another role owns: an error.

``IF NOT EXISTS`` of an existing table changes nothing, so a table a user created first stays the user's, and an
administrator's script that goes on to INSERT into "its" table would write into the user's, which the user reads.
The administrator is told instead (:class:`AlreadyExists`, naming the owner): drop the object, or choose another
name. ``CREATE OR REPLACE`` and a plain CREATE behave as DuckDB's (the administrator's replace takes ownership).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from ..catalog import access as accessdb
from ..errors import AlreadyExists
from ..queries import DIALECT
from .bound import Resolver
from .roles import ADMIN

if TYPE_CHECKING:
    from ..surface.engine import Session


def check_admin_create(session: Session, cur: Any, sql: Any) -> None:
    """Before the administrator's plain SQL runs: refuse ``CREATE ... IF NOT EXISTS`` of a table or view of the
    main database that another role owns. Anything this cannot read is left to DuckDB."""
    if not isinstance(sql, str) or "exists" not in sql.lower() or "create" not in sql.lower():
        return
    try:
        statements = [s.query for s in cur.extract_statements(sql) if s.type.name == "CREATE"]
    except Exception:  # DuckDB's own error comes when it runs
        return
    for text in statements:
        try:
            stmt = sqlglot.parse_one(text, read=DIALECT)
        except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
            continue
        kind = str(stmt.args.get("kind") or "").upper() if isinstance(stmt, exp.Create) else ""
        if kind not in ("TABLE", "VIEW") or not stmt.args.get("exists") or stmt.args.get("replace"):
            continue
        table = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
        if not isinstance(table, exp.Table):
            continue
        res = Resolver(cur, session.schema)
        target = res.target((table.catalog, table.db, table.name))
        existing = res.kind(target)
        if existing is None or not res.is_main(target[0]):
            continue
        local = f"{target[1]}.{target[2]}"
        owner = accessdb.owner_of(cur, existing, local)
        if owner is not None and owner != ADMIN:
            raise AlreadyExists(
                f"{existing.lower()} '{local}' exists and belongs to role '{owner}': CREATE {kind} IF NOT EXISTS "
                f"would leave it theirs (and what you then write into it readable by them); drop it "
                f"(DROP {existing} {local}) or choose another name")
