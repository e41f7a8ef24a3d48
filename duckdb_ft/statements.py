"""sqlglot: what a statement is, before DuckDB sees it.

For now: a training or validation query must be exactly one read-only query (SELECT, FROM-first, UNION, WITH ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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
    import re

    text = name.strip() if isinstance(name, str) else ""
    if not re.fullmatch(rf"{_IDENT}(\.{_IDENT})?", text) or len(text) > 255:
        raise InvalidArgument(
            f"invalid model name {name!r}: use an identifier (letters, digits, _ and $, not starting with a digit), "
            "optionally qualified by a schema, e.g. 'support_bot' or 'analytics.support_bot'"
        )
    parts = text.lower().split(".")
    return (parts[0], parts[1]) if len(parts) == 2 else (default_schema, parts[0])


# ------------------------------------------------------------------------------------------- duckdb-ft statements
#
# The statements DuckDB cannot parse (roles, grants, models) are read from sqlglot's DuckDB token stream by the
# small grammar below: a table from a statement's leading words to its parser, as sqlglot's STATEMENT_PARSERS.

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "USAGE", "OWNERSHIP", "CREATE MODEL", "CREATE TABLE",
              "CREATE VIEW")
OBJECT_KINDS = ("TABLE", "VIEW", "SCHEMA", "MODEL")


@dataclass
class FtStatement:
    """One parsed duckdb-ft statement: ``kind`` (e.g. 'GRANT', 'SHOW MODELS') and its parts."""

    kind: str
    privileges: list[str] = field(default_factory=list)
    object_kind: str | None = None  # TABLE, VIEW, SCHEMA, MODEL, ALL TABLES (in a schema)
    object_name: str | None = None
    role: str | None = None
    grantee_kind: str | None = None  # USER or ROLE (GRANT ROLE r TO ...)
    grantee: str | None = None
    if_exists: bool = False
    text: str = ""


class _Tokens:
    def __init__(self, sql: str):
        from sqlglot.dialects.duckdb import DuckDB

        try:
            toks = DuckDB().tokenize(sql)
        except sqlglot.errors.TokenError as e:
            raise InvalidArgument(f"cannot parse SQL: {e}") from None
        toks = [t for t in toks if t.token_type.name != "SEMICOLON"] if toks and toks[-1].token_type.name == "SEMICOLON" else toks
        self.toks, self.i, self.sql = toks, 0, sql

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        if j >= len(self.toks):
            return ""
        t = self.toks[j]
        return t.text if t.token_type.name in ("IDENTIFIER", "STRING") else t.text.upper()

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def accept(self, *words: str) -> bool:
        if all(self.peek(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.error(" ".join(words))

    def error(self, wanted: str) -> InvalidArgument:
        got = self.peek() or "end of statement"
        return InvalidArgument(f"syntax error in {self.sql.strip()[:80]!r}: expected {wanted}, got {got!r}")

    def name(self) -> str:
        """An identifier: a quoted one keeps its case, an unquoted one folds to lower case."""
        if self.done():
            raise self.error("a name")
        t = self.toks[self.i]
        if t.token_type.name in ("COMMA", "DOT", "L_PAREN", "R_PAREN", "SEMICOLON", "STRING", "NUMBER"):
            raise self.error("a name")
        self.i += 1
        return t.text if t.token_type.name == "IDENTIFIER" else t.text.lower()

    def qualified(self) -> str:
        parts = [self.name()]
        while self.accept("."):
            parts.append(self.name())
        if len(parts) > 2:
            raise InvalidArgument(f"name {'.'.join(parts)!r} has too many parts: use schema.name")
        return ".".join(parts)

    def end(self) -> None:
        if not self.done():
            raise self.error("end of statement")


def _privileges(t: _Tokens) -> list[str]:
    privs = []
    while True:
        if t.accept("ALL"):
            t.accept("PRIVILEGES")
            privs.append("ALL")
        else:
            word = t.peek()
            if word == "CREATE" and t.peek(1) in ("MODEL", "TABLE", "VIEW"):
                privs.append(f"CREATE {t.peek(1)}")
                t.i += 2
            elif word in PRIVILEGES:
                privs.append(word)
                t.i += 1
            else:
                raise t.error(f"a privilege ({', '.join(PRIVILEGES)}, ALL)")
        if not t.accept(","):
            return privs


def _object(t: _Tokens, st: FtStatement) -> None:
    if t.accept("ALL", "TABLES", "IN", "SCHEMA"):
        st.object_kind, st.object_name = "ALL TABLES", t.name()
        return
    kind = t.peek()
    if kind not in OBJECT_KINDS:
        raise t.error("TABLE, VIEW, SCHEMA, MODEL or ALL TABLES IN SCHEMA")
    t.i += 1
    st.object_kind = kind
    st.object_name = t.name() if kind == "SCHEMA" else t.qualified()


def _grant_or_revoke(t: _Tokens, kind: str) -> FtStatement:
    to = "TO" if kind == "GRANT" else "FROM"
    if t.accept("ROLE"):
        st = FtStatement(kind=f"{kind} ROLE", role=t.name())
        t.expect(to)
        if t.peek() not in ("USER", "ROLE"):
            raise t.error("USER or ROLE")
        st.grantee_kind = t.peek()
        t.i += 1
        st.grantee = t.name()
        return st
    st = FtStatement(kind=kind, privileges=_privileges(t))
    t.expect("ON")
    _object(t, st)
    t.expect(to)
    t.accept("ROLE")
    st.role = t.name()
    return st


def _show(t: _Tokens) -> FtStatement:
    if t.accept("ROLES"):
        return FtStatement(kind="SHOW ROLES")
    if t.accept("MODELS"):
        st = FtStatement(kind="SHOW MODELS")
        if t.accept("IN"):
            t.accept("SCHEMA")
            st.object_kind, st.object_name = "SCHEMA", t.name()
        return st
    if t.accept("GRANTS"):
        st = FtStatement(kind="SHOW GRANTS")
        if t.accept("TO"):
            if t.peek() not in ("ROLE", "USER"):
                raise t.error("ROLE or USER")
            st.grantee_kind = t.peek()
            t.i += 1
            st.grantee = t.name()
        elif t.accept("ON"):
            _object(t, st)
        return st
    raise t.error("ROLES, MODELS or GRANTS")


def _model_name(t: _Tokens, st: FtStatement) -> FtStatement:
    st.object_kind, st.object_name = "MODEL", t.qualified()
    return st


# Leading words → parser of the rest. Anything else is DuckDB's.
FT_STATEMENTS: dict[tuple[str, ...], Any] = {
    ("CREATE", "ROLE"): lambda t: FtStatement(kind="CREATE ROLE", if_exists=t.accept("IF", "NOT", "EXISTS"),
                                               role=t.name()),
    ("DROP", "ROLE"): lambda t: FtStatement(kind="DROP ROLE", if_exists=t.accept("IF", "EXISTS"), role=t.name()),
    ("GRANT",): lambda t: _grant_or_revoke(t, "GRANT"),
    ("REVOKE",): lambda t: _grant_or_revoke(t, "REVOKE"),
    ("USE", "ROLE"): lambda t: FtStatement(kind="USE ROLE", role=t.name()),
    ("SHOW", "ROLES"): None, ("SHOW", "MODELS"): None, ("SHOW", "GRANTS"): None,  # all three by _show
    ("DROP", "MODEL"): lambda t: _model_name(t, FtStatement(kind="DROP MODEL", if_exists=t.accept("IF", "EXISTS"))),
    ("DESCRIBE", "MODEL"): lambda t: _model_name(t, FtStatement(kind="DESCRIBE MODEL")),
    ("DESC", "MODEL"): lambda t: _model_name(t, FtStatement(kind="DESCRIBE MODEL")),
}


def parse_ft_statement(sql: str) -> FtStatement | None:
    """Parse a duckdb-ft statement; None when the statement is not one of ours (DuckDB runs it)."""
    t = _Tokens(sql)
    for head, parser in FT_STATEMENTS.items():
        if all(t.peek(k) == w for k, w in enumerate(head)):
            if head[0] == "SHOW":
                t.i += 1
                st = _show(t)
            else:
                t.i += len(head)
                st = parser(t)
            t.end()
            st.text = sql
            return st
    return None


# ------------------------------------------------------------------------------------------- what a query reads


@dataclass
class Access:
    """The objects one DuckDB statement touches, found with sqlglot."""

    kind: str  # the statement's kind: SELECT, INSERT, UPDATE, DELETE, CREATE TABLE, CREATE VIEW, DROP, ...
    reads: set[str] = field(default_factory=set)  # qualified tables or views
    writes: set[str] = field(default_factory=set)
    creates: tuple[str, str] | None = None  # (TABLE|VIEW, qualified name)
    table_functions: set[str] = field(default_factory=set)


#: Table functions that read nothing outside the database; any other (read_csv, glob, query, a file name in FROM)
#: is external access, for the administrator only.
SAFE_TABLE_FUNCTIONS = {"range", "generate_series", "unnest", "finetune", "finetune_history", "json_each",
                        "json_tree", "explode"}


def _qualify(table: exp.Table, default_schema: str) -> str:
    schema = table.db or default_schema
    return f"{schema.lower()}.{table.name.lower()}"


def tables_read(stmt: exp.Expression, default_schema: str = "main") -> tuple[set[str], set[str]]:
    """Tables and views a statement reads (CTE names excluded), and the table functions it calls."""
    ctes = {c.alias_or_name.lower() for c in stmt.find_all(exp.CTE)}
    tables, functions = set(), set()
    for table in stmt.find_all(exp.Table):
        if isinstance(table.this, exp.Anonymous):  # FROM read_csv(...), FROM query(...)
            functions.add(table.this.name.lower())
        elif isinstance(table.this, exp.Func):  # functions sqlglot knows: FROM range(3), FROM read_parquet(...)
            functions.add(table.this.sql_name().lower())
        elif isinstance(table.this, exp.Literal):  # FROM 'data.csv': DuckDB reads the file
            functions.add("file")
        elif table.name and not (not table.db and table.name.lower() in ctes):
            tables.add(_qualify(table, default_schema))
    return tables, functions


def analyze(sql: str, default_schema: str = "main") -> Access:
    """What one DuckDB statement reads, writes and creates (for a non-administrator's plain SQL).

    Raises:
        InvalidArgument: not exactly one statement, or a statement sqlglot cannot read.
    """
    statements = parse(sql)
    if len(statements) != 1:
        raise InvalidArgument(f"expected one statement, got {len(statements)}")
    stmt = statements[0]
    reads, functions = tables_read(stmt, default_schema)
    if isinstance(stmt, exp.Query):
        return Access("SELECT", reads=reads, table_functions=functions)
    if isinstance(stmt, (exp.Insert, exp.Update, exp.Delete)):
        target = stmt.this if isinstance(stmt, (exp.Insert, exp.Update)) else stmt.this
        if isinstance(target, exp.Schema):
            target = target.this
        name = _qualify(target, default_schema) if isinstance(target, exp.Table) else None
        kind = stmt.key.upper()
        acc = Access(kind, reads=reads - ({name} if name and kind == "INSERT" else set()), table_functions=functions)
        if name:
            acc.writes.add(name)
            if kind != "INSERT" and not stmt.find(exp.Where):
                pass
        return acc
    if isinstance(stmt, exp.Create) and str(stmt.args.get("kind", "")).upper() in ("TABLE", "VIEW"):
        kind = str(stmt.args["kind"]).upper()
        target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
        name = _qualify(target, default_schema)
        return Access(f"CREATE {kind}", reads=reads - {name}, creates=(kind, name), table_functions=functions)
    if isinstance(stmt, exp.Drop) and str(stmt.args.get("kind", "")).upper() in ("TABLE", "VIEW"):
        names = {_qualify(t, default_schema) for t in stmt.find_all(exp.Table)}
        return Access(f"DROP {str(stmt.args['kind']).upper()}", writes=names)
    if isinstance(stmt, exp.Set) and stmt.expressions and all(
            str(item.args.get("kind") or "").upper() == "VARIABLE" for item in stmt.expressions):
        return Access("SET VARIABLE", reads=reads, table_functions=functions)  # a session variable, not config
    kind = stmt.key.upper() if not isinstance(stmt, exp.Command) else str(stmt.this).upper()
    return Access(kind, reads=reads, table_functions=functions)
