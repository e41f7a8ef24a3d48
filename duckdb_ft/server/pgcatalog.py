"""What PostgreSQL clients ask besides their users' SQL: session settings, the server's version, and the catalog.

- Settings: ``SET application_name = ...`` and the like from drivers (psycopg, JDBC, SQLAlchemy) are accepted
  and kept on the wire session; ``SHOW`` of them, of ``transaction isolation level`` and of the parameters sent at
  start-up answers; ``SELECT version()`` names PostgreSQL 15 (what clients test for) and duckdb-ft.
- The catalog (``pg_catalog.*``, ``information_schema.*``, as psql's ``\\dt`` / ``\\d t`` and SQLAlchemy's
  reflection ask it): answered by DuckDB's own PostgreSQL catalog views in a private in-memory database that holds
  only empty copies of the tables and views the session's role may read (each checked with the authorizer's
  :class:`~duckdb_ft.governance.roles.Checker`), with external access off. So whatever a catalog query says, it
  sees the role's objects and nothing else: no rows of any table, no file, no other object.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from ..errors import PermissionDenied
from ..governance.roles import Checker
from .pgtypes import TEXT, pg_type

if TYPE_CHECKING:
    from ..surface.engine import Session

VERSION = "15.0"
#: Settings a client may SET and SHOW on its wire session (their start-up values), none of them DuckDB's.
SETTINGS = {"application_name": "", "client_encoding": "UTF8", "datestyle": "ISO, MDY", "timezone": "UTC",
            "intervalstyle": "postgres", "extra_float_digits": "1", "standard_conforming_strings": "on",
            "client_min_messages": "notice", "bytea_output": "hex", "search_path": "main",
            "statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0",
            "default_transaction_isolation": "read committed", "transaction_isolation": "read committed",
            "lc_messages": "C", "integer_datetimes": "on", "is_superuser": "off", "server_encoding": "UTF8",
            "server_version": VERSION, "server_version_num": "150000", "max_identifier_length": "63",
            "jit": "off", "max_index_keys": "32"}
_SET = re.compile(r"\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(\w+)\s*(?:=|\bTO\b)\s*(.*?)\s*;?\s*", re.I | re.S)
_SET_OTHER = re.compile(r"\s*SET\s+(?:SESSION\s+CHARACTERISTICS|TRANSACTION|NAMES)\b.*", re.I | re.S)
_SHOW = re.compile(r"\s*SHOW\s+(\w+(?:\s+\w+)*)\s*;?\s*", re.I)
_VERSION = re.compile(r"\s*SELECT\s+(?:pg_catalog\.)?version\(\)\s*;?\s*", re.I)
_CATALOG = re.compile(r"\b(pg_catalog|information_schema)\s*\.|\bpg_(class|namespace|attribute|type|index|"
                      r"constraint|database|proc|description|settings|tables|views|am|roles|user)\b", re.I)


def parameters(user: str) -> dict[str, str]:
    """The ParameterStatus a client is told at start-up."""
    return {"server_version": VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "TimeZone": "UTC", "IntervalStyle": "postgres", "integer_datetimes": "on",
            "standard_conforming_strings": "on", "is_superuser": "off", "session_authorization": user,
            "application_name": ""}


def answer_setting(wire: Any, sql: str, word: str) -> tuple[list, list, str] | None:
    """``(columns, rows, tag)`` for a SET, SHOW or version() a driver sends; None for anything else."""
    if word == "SET":
        m = _SET.fullmatch(sql)
        if m and m.group(1).lower() in SETTINGS:
            wire.settings[m.group(1).lower()] = m.group(2).strip("'\"")
            return [], [], "SET"
        if _SET_OTHER.fullmatch(sql):
            return [], [], "SET"
        return None
    if word == "SHOW":
        m = _SHOW.fullmatch(sql)
        name = "_".join(m.group(1).lower().split()) if m else ""
        name = "transaction_isolation" if name == "transaction_isolation_level" else name
        if name in SETTINGS:
            value = wire.settings.get(name, SETTINGS[name])
            return [(m.group(1).split()[-1].lower(), TEXT)], [[value.encode()]], "SHOW"
        return None
    if word == "SELECT" and _VERSION.fullmatch(sql):
        text = f"PostgreSQL {VERSION} (duckdb-ft over DuckDB {duckdb.__version__})"
        return [("version", TEXT)], [[text.encode()]], "SELECT"
    return None


def is_catalog_query(sql: str) -> bool:
    """Does ``sql`` read PostgreSQL's catalog (answered from the role's view of it, not the database)?"""
    return bool(_CATALOG.search(sql)) and sql.lstrip("( \n\t").upper().startswith(("SELECT", "WITH"))


# ------------------------------------------------------------------------------------------------------ the copy


def readable(session: Session) -> list[tuple[str, str, str, list[tuple[str, str, bool]]]]:
    """The tables and views of the main database the session's role may read: (kind, schema, name, columns)."""
    cur = session.engine.cursor()
    try:
        check = Checker(cur, session.role)
        found = cur.execute(
            "SELECT 'TABLE', schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND NOT internal AND NOT temporary AND schema_name <> 'duckdb_ft' UNION ALL "
            "SELECT 'VIEW', schema_name, view_name FROM duckdb_views() WHERE database_name = current_database() "
            "AND NOT internal AND NOT temporary AND schema_name <> 'duckdb_ft' ORDER BY 2, 3").fetchall()
        out = []
        for kind, schema, name in found:
            try:
                check.require("SELECT", "TABLE", f"{schema}.{name}")
            except PermissionDenied:
                continue
            columns = cur.execute(
                "SELECT column_name, data_type, is_nullable FROM duckdb_columns() WHERE database_name = "
                "current_database() AND schema_name = ? AND table_name = ? ORDER BY column_index",
                [schema, name]).fetchall()
            out.append((kind, schema, name, columns))
        return out
    finally:
        cur.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sandbox(session: Session) -> Any:
    """A private in-memory DuckDB holding empty copies of what the role may read, external access off."""
    box = duckdb.connect(":memory:")
    for kind, schema, name, columns in readable(session):
        target = f"{_quote(schema)}.{_quote(name)}"
        box.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        typed = [(c, t if _known(box, t) else "VARCHAR", nullable) for c, t, nullable in columns]
        if kind == "VIEW":
            select = ", ".join(f"NULL::{t} AS {_quote(c)}" for c, t, _ in typed) or "NULL AS x"
            box.execute(f"CREATE VIEW {target} AS SELECT {select} WHERE false")
        else:
            cols = ", ".join(f"{_quote(c)} {t}{'' if nullable else ' NOT NULL'}" for c, t, nullable in typed)
            box.execute(f"CREATE TABLE {target} ({cols})")
    box.execute("SET enable_external_access = false")
    box.execute("SET lock_configuration = true")
    return box


def _known(box: Any, type_name: str) -> bool:
    try:
        duckdb.sqltype(type_name)
        return True
    except (duckdb.Error, ValueError, TypeError):  # a user-defined ENUM, a type of an extension
        return False


def _run(box: Any, sql: str, params: Any) -> Any:
    try:
        return box.execute(rewrite(sql), params or None)
    except duckdb.Error as e:
        raise type(e)(f"{str(e).splitlines()[0]} (in a catalog query: duckdb-ft answers PostgreSQL's catalog "
                      "from DuckDB's pg_catalog)") from None


def run_catalog_query(session: Session, sql: str, params: Any) -> pa.Table:
    box = sandbox(session)
    try:
        return _run(box, sql, params).to_arrow_table()
    finally:
        box.close()


def describe_catalog_query(session: Session, sql: str, nparams: int) -> list | None:
    box = sandbox(session)
    try:
        described = _run(box, "DESCRIBE " + sql, [None] * nparams).fetchall()
    finally:
        box.close()
    return [(name, pg_type(kind) if kind != '"NULL"' else TEXT) for name, kind, *_ in described] or None


# ------------------------------------------------------------------------------------------------- rewriting

#: PostgreSQL spellings DuckDB's pg_catalog does not take, and what it does.
REWRITES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"OPERATOR\(pg_catalog\.(~|!~|=|<>|~~|!~~)\)"), r"\1"),
    (re.compile(r"\s+COLLATE\s+pg_catalog\.default", re.I), ""),
    (re.compile(r"::(regclass|regtype|regproc|regnamespace|oid)\b", re.I), ""),
]


def rewrite(sql: str) -> str:
    for pattern, repl in REWRITES:
        sql = pattern.sub(repl, sql)
    return sql

