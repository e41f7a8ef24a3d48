"""What PostgreSQL clients ask besides their users' SQL: session settings, the server's version, and the catalog.

- Settings: ``SET application_name = ...`` and the like from drivers (psycopg, JDBC, SQLAlchemy) are accepted
  and kept on the wire session; ``SHOW`` of them, of ``transaction isolation level`` and of the parameters sent at
  start-up answers; ``SELECT version()`` names PostgreSQL 15 (what clients test for) and duckdb-ft.
- The catalog (``pg_catalog.*``, ``information_schema.*``, as psql's ``\\dt`` / ``\\d t`` and SQLAlchemy's
  reflection ask it): answered by DuckDB's own PostgreSQL catalog views in a private in-memory database that holds
  only empty copies of the tables and views the session's role may read (each checked with the authorizer's
  :class:`~duckdb_ft.governance.roles.Checker`), with external access off. So whatever a catalog query says, it
  sees the role's objects and nothing else: no rows of any table, no file, no other object. The query is read as
  PostgreSQL and written as DuckDB by sqlglot, its catalog relations read from table macros that add what
  DuckDB's catalog lacks (columns, empty relations, functions such as ``pg_get_userbyid``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

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
_ITEM = (r"(?:pg_catalog\.)?(version|current_schema|current_user|session_user|current_database)(?:\(\))?"
         r"(?:\s+(?:AS\s+)?(\w+|\"[^\"]+\"))?")
#: ``SELECT current_schema(), session_user`` and the like, as drivers and BI tools send on connecting.
_FUNCTIONS = re.compile(rf"\s*SELECT\s+{_ITEM}(?:\s*,\s*{_ITEM})*\s*;?\s*", re.I)
_ONE_FUNCTION = re.compile(rf"\s*,?\s*{_ITEM}", re.I)
_CATALOG = re.compile(r"\b(pg_catalog|information_schema)\s*\.|\bpg_(class|namespace|attribute|type|index|"
                      r"constraint|database|proc|description|settings|tables|views|am|roles|user)\b", re.I)


class NotSupported(duckdb.NotImplementedException):
    """A PostgreSQL feature the wire cannot give (SQLSTATE 0A000)."""


def parameters(user: str) -> dict[str, str]:
    """The ParameterStatus a client is told at start-up."""
    return {"server_version": VERSION, "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "TimeZone": "UTC", "IntervalStyle": "postgres", "integer_datetimes": "on",
            "standard_conforming_strings": "on", "is_superuser": "off", "session_authorization": user,
            "application_name": ""}


def answer_setting(wire: Any, sql: str, word: str) -> tuple[list, list, str] | None:
    """``(columns, rows, tag)`` for a SET, SHOW or version() a driver sends; None for anything else."""
    if word in ("SAVEPOINT", "RELEASE"):  # psycopg's nested transaction(): kept as one transaction
        return [], [], word
    if word == "ROLLBACK" and re.match(r"\s*ROLLBACK\s+(WORK\s+|TRANSACTION\s+)?TO\b", sql, re.I):
        raise NotSupported("ROLLBACK TO SAVEPOINT is not supported (DuckDB has no savepoints): ROLLBACK the "
                           "whole transaction")
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
    if word == "SELECT" and _FUNCTIONS.fullmatch(sql):
        values = {"version": f"PostgreSQL {VERSION} (duckdb-ft over DuckDB {duckdb.__version__})",
                  "current_schema": wire.con.session.schema, "current_database": wire.database or wire.user}
        items = _ONE_FUNCTION.findall(sql[sql.upper().index("SELECT") + 6:])
        columns = [((alias.strip('"') if alias else name.lower()), TEXT) for name, alias in items]
        row = [values.get(name.lower(), wire.user).encode() for name, _ in items]
        return columns, [row], "SELECT"
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


def sandbox(session: Session, database: str = "") -> Any:
    """A private in-memory DuckDB holding empty copies of what the role may read, external access off;
    ``database``, the name the client connected with, is the one database ``pg_database`` lists."""
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
    _shadow(box, session.user or "admin", database)
    box.execute("SET enable_external_access = false")
    box.execute("SET lock_configuration = true")
    return box


def _known(box: Any, type_name: str) -> bool:
    try:
        duckdb.sqltype(type_name)
        return True
    except (duckdb.Error, ValueError, TypeError):  # a user-defined ENUM, a type of an extension
        return False


def _run(box: Any, sql: str, params: Any, fetch: Callable[[Any], Any]) -> Any:
    """``fetch`` of the relation of catalog query ``sql`` on the copy (a relation: DuckDB's Arrow output of a
    DB-API result would copy the rows, and warn)."""
    try:
        relation = box.sql(rewrite(sql), params=params or None)
        if relation is None:
            raise duckdb.InvalidInputException("a catalog query must end with a query")
        return fetch(relation)
    except duckdb.Error as e:
        raise type(e)(f"{str(e).splitlines()[0]} (in a catalog query: duckdb-ft answers PostgreSQL's catalog "
                      "from DuckDB's pg_catalog)") from None


def run_catalog_query(session: Session, sql: str, params: Any, database: str = "") -> pa.Table:
    box = sandbox(session, database)
    try:
        return _run(box, sql, params, lambda relation: relation.to_arrow_table())
    finally:
        box.close()


def describe_catalog_query(session: Session, sql: str, nparams: int, database: str = "") -> list | None:
    box = sandbox(session, database)
    try:
        described = _run(box, "DESCRIBE " + sql, [None] * nparams, lambda relation: relation.fetchall())
    finally:
        box.close()
    return [(name, pg_type(kind) if kind != '"NULL"' else TEXT) for name, kind, *_ in described] or None


# --------------------------------------------------------------------------------------- PostgreSQL's spelling

#: Columns DuckDB's catalog has as untyped NULLs that clients pass to functions (psql's ``\d+`` unnests
#: ``reloptions``): typed, by relation.
TYPED_COLUMNS = {"pg_class": "NULL::VARCHAR[] AS reloptions, NULL::VARCHAR[] AS relacl"}
#: Columns PostgreSQL's catalog has and DuckDB's lacks (what psql and SQLAlchemy read), by relation.
EXTRA_COLUMNS = {
    "pg_class": "false AS relforcerowsecurity",
    "pg_index": "false AS indnullsnotdistinct",
    "pg_constraint": "NULL::VARCHAR AS confupdtype_, false AS connullsnotdistinct",
    "pg_collation": "NULL::BIGINT AS collnamespace, NULL::VARCHAR AS collprovider, NULL::VARCHAR AS collcollate, "
                    "NULL::VARCHAR AS collctype",
}
#: Relations of PostgreSQL's catalog that DuckDB has not: empty, with the columns clients read.
EMPTY_RELATIONS = {name: ", ".join(f"NULL::{t} AS {c}" for c, t in (p.split(":") for p in cols.split())) for name, cols in {
    "pg_inherits": "inhrelid:BIGINT inhparent:BIGINT inhseqno:INTEGER inhdetachpending:BOOLEAN",
    "pg_policy": "oid:BIGINT polname:VARCHAR polrelid:BIGINT polcmd:VARCHAR polpermissive:BOOLEAN "
                 "polroles:BIGINT[] polqual:VARCHAR polwithcheck:VARCHAR",
    "pg_trigger": "oid:BIGINT tgrelid:BIGINT tgparentid:BIGINT tgname:VARCHAR tgfoid:BIGINT tgtype:INTEGER "
                  "tgenabled:VARCHAR tgisinternal:BOOLEAN tgconstrrelid:BIGINT tgconstrindid:BIGINT "
                  "tgconstraint:BIGINT tgdeferrable:BOOLEAN tginitdeferred:BOOLEAN tgnargs:INTEGER",
    "pg_rewrite": "oid:BIGINT rulename:VARCHAR ev_class:BIGINT ev_type:VARCHAR ev_enabled:VARCHAR "
                  "is_instead:BOOLEAN ev_qual:VARCHAR ev_action:VARCHAR",
    "pg_statistic_ext": "oid:BIGINT stxrelid:BIGINT stxname:VARCHAR stxnamespace:BIGINT stxowner:BIGINT "
                        "stxstattarget:INTEGER stxkeys:INTEGER[] stxkind:VARCHAR[] stxexprs:VARCHAR",
    "pg_publication": "oid:BIGINT pubname:VARCHAR pubowner:BIGINT puballtables:BOOLEAN pubinsert:BOOLEAN "
                      "pubupdate:BOOLEAN pubdelete:BOOLEAN pubtruncate:BOOLEAN pubviaroot:BOOLEAN",
    "pg_publication_rel": "oid:BIGINT prpubid:BIGINT prrelid:BIGINT prqual:VARCHAR prattrs:INTEGER[]",
    "pg_publication_namespace": "oid:BIGINT pnpubid:BIGINT pnnspid:BIGINT",
    "pg_foreign_table": "ftrelid:BIGINT ftserver:BIGINT ftoptions:VARCHAR[]",
    "pg_partitioned_table": "partrelid:BIGINT partstrat:VARCHAR partnatts:INTEGER partdefid:BIGINT "
                            "partattrs:INTEGER[] partexprs:VARCHAR",
    "pg_auth_members": "oid:BIGINT roleid:BIGINT member:BIGINT grantor:BIGINT admin_option:BOOLEAN "
                       "inherit_option:BOOLEAN set_option:BOOLEAN",
    "pg_opclass": "oid:BIGINT opcmethod:BIGINT opcname:VARCHAR opcnamespace:BIGINT opcdefault:BOOLEAN "
                  "opcfamily:BIGINT opcintype:BIGINT",
    "pg_user": "usesysid:BIGINT usename:VARCHAR usesuper:BOOLEAN usecreatedb:BOOLEAN",
}.items()}

#: PostgreSQL's functions DuckDB lacks that clients call on catalog rows (none of which have what they describe:
#: triggers, rules, statistics objects, partitions): NULL, by their numbers of arguments.
NULL_FUNCTIONS = {"pg_get_statisticsobjdef_columns": (1,), "pg_get_triggerdef": (1, 2), "pg_get_ruledef": (1, 2),
                  "pg_get_partkeydef": (1,), "pg_get_indexdef": (1, 3), "pg_get_serial_sequence": (2,),
                  "pg_get_partition_constraintdef": (1,), "shobj_description": (2,),
                  "pg_tablespace_location": (1,), "pg_relation_is_publishable": (1,),
                  "pg_get_function_result": (1,), "pg_get_function_arguments": (1,),
                  "pg_get_function_identity_arguments": (1,), "pg_table_size": (1,), "pg_relation_size": (1, 2),
                  "pg_total_relation_size": (1,)}

#: ``pg_database``: one row, the database the client connected to (any name reaches the served one), UTF-8.
DATABASE = ("16384::BIGINT AS oid, {name} AS datname, 10::BIGINT AS datdba, 6 AS encoding, 'c' AS datlocprovider, "
            "false AS datistemplate, true AS datallowconn, -1 AS datconnlimit, 0::BIGINT AS datfrozenxid, "
            "0::BIGINT AS datminmxid, 1663::BIGINT AS dattablespace, 'C' AS datcollate, 'C' AS datctype, "
            "NULL::VARCHAR AS daticulocale, NULL::VARCHAR AS datcollversion, NULL::VARCHAR[] AS datacl")
#: ``pg_roles``: one row, the session's user (``pg_get_userbyid`` names it for every oid); no role memberships.
ROLES = ("10::BIGINT AS oid, {name} AS rolname, false AS rolsuper, true AS rolinherit, false AS rolcreaterole, "
         "false AS rolcreatedb, true AS rolcanlogin, false AS rolreplication, -1 AS rolconnlimit, "
         "'********' AS rolpassword, NULL::TIMESTAMPTZ AS rolvaliduntil, false AS rolbypassrls, "
         "NULL::VARCHAR[] AS rolconfig")


#: PostgreSQL's names of the types DuckDB's format_type() names otherwise (int4, varchar, ...): what SQLAlchemy
#: and psql know them by.
TYPE_NAMES = {16: "boolean", 20: "bigint", 21: "smallint", 23: "integer", 25: "text", 700: "real",
              701: "double precision", 1043: "character varying", 1082: "date", 1083: "time without time zone",
              1114: "timestamp without time zone", 1184: "timestamp with time zone", 1186: "interval", 114: "json",
              2950: "uuid", 17: "bytea"}


def _shadow(box: Any, user: str, database: str = "") -> list[str]:
    """Table macros ``_pg_<relation>()`` in the copy: DuckDB's ``pg_catalog`` relations with the columns clients
    read, and those it lacks, empty (macros, so that no catalog listing shows them), but ``pg_database`` (the
    client's ``database``) and ``pg_roles`` (the session's user); PostgreSQL's functions DuckDB lacks
    (``pg_get_userbyid`` names the session's user). The relations' names."""
    names = [r[0] for r in box.execute("SELECT view_name FROM duckdb_views() WHERE database_name = 'system' AND "
                                       "schema_name = 'pg_catalog'").fetchall()]
    for name in names:
        extra, typed = EXTRA_COLUMNS.get(name), TYPED_COLUMNS.get(name)
        box.execute(f"CREATE MACRO _pg_{name}() AS TABLE SELECT *{f' REPLACE ({typed})' if typed else ''}"
                    f"{', ' + extra if extra else ''} FROM pg_catalog.{name}")
    # the copy's own macros (these) are no functions of the database: pg_proc lists DuckDB's built-ins only
    box.execute("CREATE OR REPLACE MACRO _pg_pg_proc() AS TABLE SELECT * FROM pg_catalog.pg_proc WHERE "
                "pronamespace IS DISTINCT FROM (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'main')")
    for name, columns in EMPTY_RELATIONS.items():
        box.execute(f"CREATE MACRO _pg_{name}() AS TABLE SELECT {columns} WHERE false")
    literal = "'" + user.replace("'", "''") + "'"
    box.execute("CREATE OR REPLACE MACRO _pg_pg_database() AS TABLE SELECT "
                + DATABASE.format(name="'" + (database or user).replace("'", "''") + "'"))
    box.execute(f"CREATE MACRO _pg_pg_roles() AS TABLE SELECT {ROLES.format(name=literal)}")
    box.execute(f"CREATE MACRO pg_get_userbyid(oid) AS {literal}")
    box.execute("CREATE MACRO pg_encoding_to_char(e) AS 'UTF8'")
    box.execute("CREATE MACRO array_upper(a, d) AS len(a)")
    settings = {**SETTINGS, "default_table_access_method": "heap"}
    box.execute("CREATE MACRO current_setting(name) AS CASE lower(name) " + " ".join(
        f"WHEN '{k}' THEN '{v}'" for k, v in settings.items()) + " END")
    box.execute("CREATE MACRO format_type(oid, typmod) AS CASE oid " + " ".join(
        f"WHEN {k} THEN '{v}'" for k, v in TYPE_NAMES.items()) + " ELSE system.pg_catalog.format_type(oid, typmod) END")
    box.execute("CREATE MACRO to_regtype(name) AS (SELECT min(oid) FROM pg_catalog.pg_type WHERE typname = name)")
    for name, arities in NULL_FUNCTIONS.items():
        box.execute(f"CREATE MACRO {name} " + ", ".join(
            "(" + ", ".join(f"a{i}" for i in range(n)) + ") AS NULL" for n in arities))
    return names + list(EMPTY_RELATIONS) + ["pg_roles"]


#: The relations of DuckDB's pg_catalog (DuckDB 1.x and 2.x) and those the copy adds: what a query names is
#: read from the copy's table macros.
SHADOWED = {"pg_am", "pg_attrdef", "pg_attribute", "pg_class", "pg_collation", "pg_constraint", "pg_database",
            "pg_depend", "pg_description", "pg_enum", "pg_index", "pg_indexes", "pg_namespace",
            "pg_prepared_statements", "pg_proc", "pg_sequence", "pg_sequences", "pg_settings", "pg_tables",
            "pg_tablespace", "pg_type", "pg_views", "pg_roles"} | set(EMPTY_RELATIONS)


#: PostgreSQL spellings DuckDB does not take, and DuckDB's: applied in order to a catalog query before sqlglot
#: translates it (sqlglot's PostgreSQL reading knows neither OPERATOR() nor PostgreSQL's catalog schema).
REWRITES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"OPERATOR\(pg_catalog\.(~|!~|=|<>|~~|!~~|~\*|!~\*)\)"), r"\1"),
    (re.compile(r"\s+COLLATE\s+pg_catalog\.default", re.I), ""),
    (re.compile(r"::\s*(?:pg_catalog\.)?(regclass|regtype|regproc|regnamespace|regprocedure|oid)\b", re.I), ""),
    (re.compile(r"::\s*pg_catalog\.", re.I), "::"),
    (re.compile(r"\bpg_get_expr\(([^,()]+),([^,()]+),\s*true\s*\)", re.I), r"pg_get_expr(\1,\2)"),
    (re.compile(r"\bpg_catalog\.(\w+)\s*\(", re.I), r"\1("),
]


_OID_TYPES = {"REGCLASS", "REGTYPE", "REGPROC", "REGNAMESPACE", "REGPROCEDURE", "OID"}


def _swap(node: exp.Expression) -> exp.Expression:
    """A relation of PostgreSQL's catalog as its table macro (keeping its name as the alias); a column qualified
    with ``pg_catalog.`` without it."""
    if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) and not node.catalog \
            and node.db.lower() in ("", "pg_catalog") and node.name.lower() in SHADOWED:
        return exp.Table(this=exp.Anonymous(this=f"_pg_{node.name.lower()}", expressions=[]),
                         alias=exp.TableAlias(this=exp.to_identifier(node.alias or node.name)))
    if isinstance(node, exp.Column) and node.db.lower() == "pg_catalog":
        node = node.copy()
        node.set("db", None)
    return node


def _oids(tree: exp.Expression) -> exp.Expression:
    """Casts to PostgreSQL's OID types (regclass, ...) taken out: DuckDB's OIDs are plain numbers."""
    for cast in list(tree.find_all(exp.Cast)):
        if cast.to.sql().upper() in _OID_TYPES:
            cast.replace(cast.this)
    return tree


def rewrite(sql: str) -> str:
    """A client's catalog query in DuckDB's SQL over the copy's relations.

    Raises:
        duckdb.ParserException: sqlglot cannot read it as PostgreSQL.
    """
    for pattern, repl in REWRITES:
        sql = pattern.sub(repl, sql)
    try:
        trees = sqlglot.parse(sql, read="postgres")
    except sqlglot.errors.ParseError as e:
        raise duckdb.ParserException(f"cannot read this catalog query: {str(e).splitlines()[0]}") from None
    out = ";\n".join(_oids(t).transform(_swap).sql(dialect="duckdb") for t in trees if t is not None)
    return re.sub(r"\bJSON_BUILD_OBJECT\(", "JSON_OBJECT(", out, flags=re.I)
