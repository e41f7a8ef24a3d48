"""duckdb-ft's own statements, which DuckDB cannot parse: roles, grants, models.

They are read from sqlglot's DuckDB token stream by the small grammar below: one parser per statement, for the
words after its leading ones. The table from leading words to parser and handler, as sqlglot's
STATEMENT_PARSERS, is :data:`statements.STATEMENTS`; :func:`parse` reads a statement against it. Anything else is
DuckDB's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot

from ..errors import InvalidArgument
from ..governance.roles import OBJECT_KINDS, PRIVILEGES
from .redact import mask_secrets, secret_spans



@dataclass
class FtStatement:
    """One parsed duckdb-ft statement: ``kind`` (e.g. 'GRANT', 'SHOW MODELS') and its parts."""

    kind: str
    privileges: list[str] = field(default_factory=list)
    object_kind: str | None = None  # TABLE, VIEW, SCHEMA, MODEL, BASE MODEL, SEQUENCE, ALL TABLES (in a schema)
    object_name: str | None = None
    role: str | None = None
    grantee_kind: str | None = None  # USER or ROLE (GRANT ROLE r TO ...)
    grantee: str | None = None
    if_exists: bool = False
    version: str | None = None  # a model's version: m@v1, DROP MODEL m VERSION v1, SET DEFAULT VERSION v1
    source: str | None = None  # CREATE BASE MODEL name FROM 'source'
    replace: bool = False  # CREATE OR REPLACE
    settings: dict[str, int | None] = field(default_factory=dict)  # ALTER ROLE r SET NAME = n, ... (None: UNSET)
    #: CREATE/ALTER USER's PASSWORD = '...': never shown (repr), as the statement's text is not.
    password: str | None = field(default=None, repr=False)
    #: A user's or a token's properties: DEFAULT_ROLE, ROLE_RESTRICTION, DAYS_TO_EXPIRY; UNSET names: None.
    properties: dict[str, Any] = field(default_factory=dict)
    text: str = field(default="", repr=False)
    head: tuple[str, ...] = ()  # the leading words that chose its parser and handler


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
        if not self.done() and any(a <= self.toks[self.i].start < b for a, b in secret_spans(self.sql) or []):
            got = "***"  # a password in the wrong place is not echoed either
        return InvalidArgument(f"syntax error in {mask_secrets(self.sql.strip())[:80]!r}: expected {wanted}, "
                               f"got {got!r}")

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

    def version(self) -> str:
        """A version label: a name or a number (``v2``, ``2024_q1``, ``3``), lower-cased."""
        if not self.done() and self.toks[self.i].token_type.name in ("NUMBER", "STRING"):
            self.i += 1
            return self.toks[self.i - 1].text.lower()
        return self.name().lower()

    def end(self) -> None:
        if not self.done():
            raise self.error("end of statement")


#: The token stream a statement's parser reads (the parsers of other modules, :mod:`.user_statements`, take it too).
Tokens = _Tokens


def _privileges(t: _Tokens) -> list[str]:
    privs = []
    while True:
        if t.accept("ALL"):
            t.accept("PRIVILEGES")
            privs.append("ALL")
        else:
            found = next((p for p in PRIVILEGES if t.accept(*p.split())), None)
            if found is None:
                raise t.error(f"a privilege ({', '.join(PRIVILEGES)}, ALL)")
            privs.append(found)
        if not t.accept(","):
            return privs


def _object(t: _Tokens, st: FtStatement) -> None:
    if t.accept("ALL", "TABLES", "IN", "SCHEMA"):
        st.object_kind, st.object_name = "ALL TABLES", t.name()
        return
    if t.accept("BASE", "MODEL"):
        st.object_kind, st.object_name = "BASE MODEL", t.name()
        return
    kind = t.peek()
    if kind not in OBJECT_KINDS:
        raise t.error(f"{', '.join(OBJECT_KINDS)} or ALL TABLES IN SCHEMA")
    t.i += 1
    st.object_kind = kind
    st.object_name = t.name() if kind == "SCHEMA" else t.qualified()
    if kind == "MODEL" and t.peek() == "@":
        raise InvalidArgument(f"privileges are on a model and cover all its versions: name model "
                              f"'{st.object_name}' without @version")


def grant_role(t: _Tokens, kind: str) -> FtStatement:
    """GRANT ROLE r TO {USER u | ROLE r2}; REVOKE ROLE r FROM ..."""
    st = FtStatement(kind=f"{kind} ROLE", role=t.name())
    t.expect("TO" if kind == "GRANT" else "FROM")
    if t.peek() not in ("USER", "ROLE"):
        raise t.error("USER or ROLE")
    st.grantee_kind = t.peek()
    t.i += 1
    st.grantee = t.name()
    return st


def grant(t: _Tokens, kind: str) -> FtStatement:
    """GRANT privileges ON object TO [ROLE] r; REVOKE privileges ON object FROM [ROLE] r."""
    st = FtStatement(kind=kind, privileges=_privileges(t))
    t.expect("ON")
    _object(t, st)
    t.expect("TO" if kind == "GRANT" else "FROM")
    t.accept("ROLE")
    st.role = t.name()
    return st


def show_models(t: _Tokens) -> FtStatement:
    st = FtStatement(kind="SHOW MODELS")
    if t.accept("IN"):
        t.accept("SCHEMA")
        st.object_kind, st.object_name = "SCHEMA", t.name()
    return st


def show_grants(t: _Tokens) -> FtStatement:
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


def show_versions(t: _Tokens) -> FtStatement:
    t.expect("IN", "MODEL")
    return _model_name(t, FtStatement(kind="SHOW VERSIONS"), versioned=False)


def _model_name(t: _Tokens, st: FtStatement, versioned: bool = True) -> FtStatement:
    """A model's name, and with ``versioned`` an optional ``@version`` after it."""
    st.object_kind, st.object_name = "MODEL", t.qualified()
    if t.accept("@"):
        if not versioned:
            raise InvalidArgument(f"{st.kind} names a model, not one of its versions: drop the @version")
        st.version = t.version()
    return st


def drop_model(t: _Tokens) -> FtStatement:
    st = _model_name(t, FtStatement(kind="DROP MODEL", if_exists=t.accept("IF", "EXISTS")))
    if st.version is None and t.accept("VERSION"):
        st.version = t.version()
    return st


def alter_model(t: _Tokens) -> FtStatement:
    """ALTER MODEL m SET DEFAULT VERSION v (or Snowflake's SET DEFAULT_VERSION = v); ALTER MODEL m DROP VERSION v."""
    st = _model_name(t, FtStatement(kind="ALTER MODEL"), versioned=False)
    if t.accept("DROP", "VERSION"):
        st.kind, st.version = "DROP MODEL", t.version()
        return st
    t.expect("SET")
    if not (t.accept("DEFAULT", "VERSION") or t.accept("DEFAULT_VERSION")):
        raise t.error("SET DEFAULT VERSION or DROP VERSION")
    t.accept("=")
    st.version = t.version()
    return st


def create_base_model(t: _Tokens, replace: bool) -> FtStatement:
    """CREATE [OR REPLACE] BASE MODEL [IF NOT EXISTS] name FROM 'folder or org/name'."""
    st = FtStatement(kind="CREATE BASE MODEL", replace=replace, if_exists=t.accept("IF", "NOT", "EXISTS"))
    st.object_kind, st.object_name = "BASE MODEL", t.name()
    t.expect("FROM")
    if t.done() or t.toks[t.i].token_type.name != "STRING":
        raise t.error("a quoted folder or hub id ('org/name')")
    st.source = t.toks[t.i].text
    t.i += 1
    return st


def set_default_model(t: _Tokens) -> FtStatement:
    """SET duckdb_ft_default_model = 'name' | name (or TO): the AISQL functions' default model."""
    st = FtStatement(kind="SET DUCKDB_FT_DEFAULT_MODEL")
    if not (t.accept("=") or t.accept("TO")):
        raise t.error("= 'model name'")
    if not t.done() and t.toks[t.i].token_type.name == "STRING":
        st.object_name = t.toks[t.i].text
        t.i += 1
        return st
    _model_name(t, st)
    st.object_name += f"@{st.version}" if st.version else ""
    return st


def drop_base_model(t: _Tokens) -> FtStatement:
    return FtStatement(kind="DROP BASE MODEL", if_exists=t.accept("IF", "EXISTS"), object_kind="BASE MODEL",
                       object_name=t.name())


def alter_role(t: _Tokens) -> FtStatement:
    """ALTER ROLE r SET NAME = n [, NAME = n ...] | UNSET NAME [, NAME ...]: a role's limits."""
    st = FtStatement(kind="ALTER ROLE", role=t.name())
    unset = t.accept("UNSET")
    if not unset:
        t.expect("SET")
    while True:
        name = t.name().upper()
        if unset:
            st.settings[name] = None
        else:
            t.expect("=")
            if t.done() or t.toks[t.i].token_type.name != "NUMBER":
                raise t.error(f"a whole number for {name}")
            st.settings[name] = int(float(t.toks[t.i].text))
            t.i += 1
        if not t.accept(","):
            return st


def describe_model(t: _Tokens) -> FtStatement:
    return _model_name(t, FtStatement(kind="DESCRIBE MODEL"))


def create_role(t: _Tokens) -> FtStatement:
    return FtStatement(kind="CREATE ROLE", if_exists=t.accept("IF", "NOT", "EXISTS"), role=t.name())


def drop_role(t: _Tokens) -> FtStatement:
    return FtStatement(kind="DROP ROLE", if_exists=t.accept("IF", "EXISTS"), role=t.name())


def describe_role(t: _Tokens) -> FtStatement:
    return FtStatement(kind="DESCRIBE ROLE", role=t.name())


def use_role(t: _Tokens) -> FtStatement:
    return FtStatement(kind="USE ROLE", role=t.name())


def parse(sql: str, parsers: dict[tuple[str, ...], Any]) -> FtStatement | None:
    """Parse ``sql`` with the parser of the first entry of ``parsers`` (leading words -> parser of the rest) whose
    words lead it; None when none does (the statement is DuckDB's)."""
    t = _Tokens(sql)
    for head, parser in parsers.items():
        if all(t.peek(k).upper() == w for k, w in enumerate(head)):  # upper: RESET's rest is one STRING token
            t.i += len(head)
            st = parser(t)
            t.end()
            st.text, st.head = sql, head
            return st
    return None
