"""Queries and names users pass as strings: parsing with sqlglot's DuckDB dialect, the one-read-only-query check of
training and validation queries, and model names (``name`` or ``schema.name``).

Light on purpose (no torch): every layer uses it. Whether a query may *run* for a role is not decided here but on
DuckDB's own parse (:mod:`duckdb_ft.governance`).
"""

from __future__ import annotations

import logging
import re
import sqlglot
from sqlglot import exp

from .errors import InvalidArgument

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # no "falling back to Command" chatter in the shell

DIALECT = "duckdb"


def parse(sql: str) -> list[exp.Expression]:
    """Parse into statements with DuckDB's dialect; a syntax error becomes InvalidArgument with the parser's text."""
    try:
        return [e for e in sqlglot.parse(sql, read=DIALECT) if e is not None]
    except sqlglot.errors.ParseError as e:
        first = e.errors[0] if e.errors else {}
        where = f" (line {first.get('line')}, column {first.get('col')})" if first else ""
        raise InvalidArgument(f"cannot parse SQL{where}: {first.get('description') or e}") from None
    except sqlglot.errors.TokenError as e:  # an unterminated string or comment, before any parsing
        raise InvalidArgument(f"cannot parse SQL: {e}") from None


def check_query(sql: str, what: str = "training query") -> str:
    """Check ``sql`` is one read-only query and return it without a trailing semicolon.

    Raises:
        InvalidArgument: empty, several statements, or a statement that is not a query (DDL, DML, COPY, ATTACH,
        PRAGMA, SET, INSTALL, LOAD, ...).
    """
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidArgument(f"the {what} is empty: pass a SELECT, e.g. 'SELECT q AS prompt, a AS completion FROM faq'")
    statements = parse(sql)
    if len(statements) != 1:
        raise InvalidArgument(f"the {what} must be exactly one SELECT statement, got {len(statements)} statements")
    stmt = statements[0]
    if not isinstance(stmt, exp.Query):
        kind = stmt.key.upper() if not isinstance(stmt, exp.Command) else str(stmt.this).upper()
        raise InvalidArgument(f"the {what} must be a SELECT statement, got {kind}: it may only read data")
    for node in stmt.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Copy, exp.Attach)):
            raise InvalidArgument(f"the {what} must only read data; it contains {node.key.upper()}")
    return sql.strip().rstrip(";").rstrip()


_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"


def parse_model_name(name: str, default_schema: str = "main") -> tuple[str, str]:
    """``name`` or ``schema.name`` → (schema, name), lower-cased as DuckDB folds unquoted identifiers.

    Raises:
        InvalidArgument: not one or two identifiers separated by a dot.
    """
    text = name.strip() if isinstance(name, str) else ""
    if not re.fullmatch(rf"{_IDENT}(\.{_IDENT})?", text) or len(text) > 255:
        raise InvalidArgument(
            f"invalid model name {name!r}: use an identifier (letters, digits, _ and $, not starting with a digit), "
            "optionally qualified by a schema, e.g. 'support_bot' or 'analytics.support_bot'"
        )
    parts = text.lower().split(".")
    return (parts[0], parts[1]) if len(parts) == 2 else (default_schema, parts[0])


_VERSION = r"[A-Za-z0-9_$]+"


def check_version(version: str) -> str:
    """A version label (``v1``, ``v2``, or a name of the user's), lower-cased.

    Raises:
        InvalidArgument: not letters, digits, _ and $.
    """
    text = version.strip() if isinstance(version, str) else ""
    if not re.fullmatch(_VERSION, text) or len(text) > 64:
        raise InvalidArgument(f"invalid model version {version!r}: use letters, digits, _ and $, e.g. 'v2'")
    return text.lower()


def parse_model_ref(name: str, default_schema: str = "main") -> tuple[str, str, str | None]:
    """``name``, ``schema.name``, ``name@version`` or ``schema.name@version`` → (schema, name, version or None).

    A name without ``@version`` means the model's default version.

    Raises:
        InvalidArgument: the name or the version is not valid.
    """
    text = name.strip() if isinstance(name, str) else name
    if isinstance(text, str) and "@" in text:
        base, _, version = text.rpartition("@")
        schema, model = parse_model_name(base, default_schema)
        return schema, model, check_version(version)
    schema, model = parse_model_name(text, default_schema)
    return schema, model, None


def model_ref(schema: str, name: str, version: str | None) -> str:
    """``schema.name@version`` (``schema.name`` when version is None)."""
    return f"{schema}.{name}" + (f"@{version}" if version else "")
