"""Which functions and types a non-administrator's SQL may name: an allow-list from DuckDB's own function catalog.

A user session may call the scalar, aggregate and window functions (and DuckDB's built-in macros over them) listed
in :data:`.function_list.ALLOWED_FUNCTIONS`: functions of their arguments, which read no catalog, setting,
sequence or file (``abs``, ``lower``, ``sum``, ``row_number``, ``random``, ...), plus duckdb-ft's public
functions. Everything else is for the administrator: ``nextval``/``currval``/``setval``, ``current_setting``,
``current_database``/``current_schema``, ``version``, ``json_serialize_plan`` (it binds a query given as text),
``txid_current``, ``sleep_ms``, ``write_log``, DuckDB-internal functions, any function not in DuckDB's catalog of
this release, and functions the administrator defines (macros). The lists were derived from ``duckdb_functions()``
by :func:`propose` and reviewed; ``tests/test_function_allowlist.py`` walks DuckDB's whole function list and fails
on a function in neither list, so a new DuckDB release's functions must be classified before users may call them.

Types: a user session may name DuckDB's built-in types (``x::INTEGER``, ``STRUCT(a INT)``, ``ENUM('a', 'b')``);
a type the administrator created (``CREATE TYPE mood AS ENUM (...)``) names values the role cannot see, so naming
one (a cast, a column definition) is for the administrator. A function or type that does not exist gets the same
error as one that is not allowed.

Decided on what DuckDB itself parsed: every FUNCTION and WINDOW node of ``json_serialize_sql``'s tree, the
identifiers DuckDB's binder turns into function calls (``current_schema``, ``user``), and every TYPE node.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import duckdb
from sqlglot import exp

from ..errors import PermissionDenied
from ..queries import DIALECT
from .function_list import ALLOWED_FUNCTIONS

if TYPE_CHECKING:
    from ..surface.engine import Session

#: Bare identifiers DuckDB's binder turns into a call when no column has the name (SQL's value functions).
SQL_VALUE_FUNCTIONS = {"current_catalog", "current_date", "current_schema", "current_role", "current_time",
                       "current_timestamp", "current_user", "localtime", "localtimestamp", "session_user", "user"}
#: Of those, the ones that are the current time (their functions have other names in the catalog).
_TIME_VALUES = {"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp"}
#: duckdb-ft's public functions: the session's macros, and Cortex's names in the attached ``snowflake`` database.
#: The AISQL names are those of surface/aisql_functions.FUNCTIONS (a test holds the two together).
PUBLIC_MACROS = {"complete", "try_complete", "ai_complete", "ai_filter", "ai_classify", "ai_classify_prompt",
                 "ai_extract", "ai_sentiment", "ai_agg", "ai_summarize_agg", "finetune", "ft_execute"}
CORTEX = ("snowflake", "cortex")
#: Functions that are pure but volatile (random numbers, ids, raising an error): allowed though not CONSISTENT.
VOLATILE_ALLOWED = {"random", "uuid", "uuidv4", "uuidv7", "gen_random_uuid", "error"}
#: Calls DuckDB's binder handles itself (not scalar functions in its catalog): allowed.
BINDER_FUNCTIONS = {"unnest", "unlist"}
#: Functions DuckDB marks CONSISTENT (or consistent within a query) that read the catalog, settings, the
#: transaction, the database's files or bind SQL given as text: reviewed as administrator-only.
REVIEWED_ADMIN = {"current_setting", "current_database", "current_schema", "current_schemas", "in_search_path",
                  "txid_current", "version", "json_serialize_plan", "index_key", "stats", "vector_type",
                  "write_log", "sleep_ms", "setseed", "nextval", "currval", "setval", "current_connection_id",
                  "current_query", "current_query_id", "current_transaction_id"}


def deny_call(session: Session, what: str, name: str) -> PermissionDenied:
    """The one error for a function or type that does not exist or that the role may not use."""
    return PermissionDenied.of(PermissionDenied.ADMINISTRATOR, role=session.role,
                               reason=f"{what} '{name}' does not exist or is for the administrator only")


_TYPES: dict[str, frozenset] = {}


def builtin_types(cur: Any) -> frozenset:
    """DuckDB's own type names (lower case): those of its system catalog, and the parser's nested-type words."""
    if duckdb.__version__ not in _TYPES:
        rows = cur.execute("SELECT DISTINCT lower(type_name) FROM duckdb_types() WHERE database_name = 'system'")
        _TYPES[duckdb.__version__] = frozenset(r[0] for r in rows.fetchall()) | {
            "list", "array", "struct", "map", "union", "enum"}
    return _TYPES[duckdb.__version__]


def shadowed(cur: Any) -> set[str]:
    """Names of functions (macros) defined in the main or another attached database, which an unqualified call
    could reach before DuckDB's own: never taken as the built-in of that name."""
    rows = cur.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                       "WHERE database_name NOT IN ('system', 'temp', 'snowflake')").fetchall()
    return {r[0] for r in rows}


def check_calls(session: Session, cur: Any, calls: set[tuple[str, str, str]], types: set[tuple[str, str, str]]) -> None:
    """Every call and type a user's statement names is allowed; else the one error (:func:`deny_call`)."""
    if not calls and not types:
        return
    local = shadowed(cur) if calls else set()
    for catalog, schema, name in sorted(calls):
        if name.startswith("__ft_"):
            continue  # duckdb-ft's internal functions: refused with their own message by the caller
        if (catalog, schema) == CORTEX and name in PUBLIC_MACROS - {"ft_execute"}:
            continue
        builtin_scope = catalog in ("", "system") and schema in ("", "main", "pg_catalog") and (
            schema != "main" or catalog == "system")
        if not catalog and not schema and name in PUBLIC_MACROS:
            continue
        if builtin_scope and name in ALLOWED_FUNCTIONS and (catalog or name not in local):
            continue
        raise deny_call(session, "function", ".".join(p for p in (catalog, schema, name) if p))
    builtin = builtin_types(cur) if types else frozenset()
    for catalog, schema, name in sorted(types):
        if catalog or schema or name not in builtin:
            raise deny_call(session, "type", ".".join(p for p in (catalog, schema, name) if p))


def walk_node(node: dict, calls: set, types: set) -> None:
    """Record one node of DuckDB's parse tree if it calls a function or names a type (lower-cased parts)."""
    cls = node.get("class")
    if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
        node["function"]["table_function"] = True  # a table function: authorized as one, not as a call
    if cls in ("FUNCTION", "WINDOW") and not node.get("table_function"):
        calls.add((str(node.get("catalog") or "").lower(), str(node.get("schema") or "").lower(),
                   str(node.get("function_name") or "").lower()))
    elif cls == "COLUMN_REF":
        names = node.get("column_names") or []
        if len(names) == 1 and str(names[0]).lower() in SQL_VALUE_FUNCTIONS - _TIME_VALUES:
            calls.add(("", "", str(names[0]).lower()))
    elif cls == "TYPE":
        types.add((str(node.get("catalog") or "").lower(), str(node.get("schema") or "").lower(),
                   str(node.get("type_name") or "").lower()))


def pure_query(cur: Any, sql: str) -> bool:
    """Does ``sql`` (one query, parsed by DuckDB on ``cur``) call only allow-listed functions, unqualified, and
    name only built-in types? For SQL a user's session has run somewhere else (sql_match's predictions)."""
    try:
        tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    except Exception:  # duckdb.Error: not one query DuckDB can parse
        return False
    calls: set = set()
    types: set = set()
    if tree.get("error"):
        return False
    _collect(tree, calls, types)
    builtin = builtin_types(cur) if types else frozenset()
    return all(not c and not s and n in ALLOWED_FUNCTIONS for c, s, n in calls) and \
        all(not c and not s and n in builtin for c, s, n in types)


def outside_queries(stmt: exp.Expression) -> list[str]:
    """SELECTs of a DML/DDL statement's expressions that are not inside one of its queries (UPDATE's SET and
    WHERE, VALUES rows, column defaults, CHECKs, column types), for DuckDB's parser to name their calls and types."""
    out = []
    for node in stmt.walk():
        if node.find_ancestor(exp.Query) is not None or isinstance(node, exp.Query):
            continue
        if isinstance(node, exp.DataType) and node.find_ancestor(exp.DataType) is None \
                and node.find_ancestor(exp.Func) is None:
            out.append(f"SELECT CAST(NULL AS {node.sql(dialect=DIALECT)})")
        elif isinstance(node, (exp.Func, exp.Anonymous)) and node.find_ancestor(exp.Func, exp.Anonymous) is None:
            out.append(f"SELECT {node.sql(dialect=DIALECT)}")
        elif isinstance(node, exp.Column) and not node.table and node.name.lower() in SQL_VALUE_FUNCTIONS:
            out.append(f"SELECT {node.name}")
    return out


def propose(cur: Any) -> dict[str, set[str]]:
    """The classification DuckDB's catalog suggests (for reviewing a new release's functions): ``allowed`` are
    scalar, aggregate and window functions DuckDB marks consistent and free of side effects (or reviewed as
    harmless), and macros whose definition calls only allowed functions and reads no relation; ``admin`` the
    other functions, ``table`` and ``pragma`` every table function and pragma by name."""
    rows = cur.execute("SELECT DISTINCT lower(function_name), function_type, stability, has_side_effects, "
                       "macro_definition, database_name FROM duckdb_functions() WHERE database_name = 'system' "
                       "AND NOT starts_with(function_name, '__ft_')").fetchall()
    allowed, admin, macros = set(BINDER_FUNCTIONS), set(), {}
    for name, kind, stability, side_effects, definition, _ in rows:
        if kind in ("table", "table_macro", "pragma"):
            continue
        if kind == "macro":
            macros.setdefault(name, []).append(definition or "")
        elif name in REVIEWED_ADMIN or name.startswith("__") or (
                (stability == "VOLATILE" or side_effects) and name not in VOLATILE_ALLOWED):
            admin.add(name)
        else:
            allowed.add(name)
    allowed -= admin
    pending = dict(macros)
    while pending:  # a macro is allowed once every call of its definitions is, and it reads no relation
        progress = False
        for name, definitions in list(pending.items()):
            calls, types, reads = set(), set(), False
            for d in definitions:
                tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [f"SELECT {d}"]).fetchall()[0][0])
                reads |= bool(tree.get("error")) or _collect(tree, calls, types)
            names = {c[2] for c in calls} - {name}
            if reads or name in REVIEWED_ADMIN or names & admin or names - allowed - set(pending):
                admin.add(name)
            elif names <= allowed:
                allowed.add(name)
            else:
                continue
            del pending[name]
            progress = True
        if not progress:
            admin |= set(pending)
            break
    tables = {r[0] for r in rows if r[1] in ("table", "table_macro")}
    return {"allowed": allowed, "admin": admin, "table": tables, "pragma": {r[0] for r in rows if r[1] == "pragma"}}


def _collect(node: Any, calls: set, types: set) -> bool:
    """Walk a parse tree for calls and types; True when it reads a relation or a table function."""
    reads = False
    if isinstance(node, list):
        for item in node:
            reads |= _collect(item, calls, types)
    elif isinstance(node, dict):
        walk_node(node, calls, types)
        reads = node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION") or node.get("class") == "SUBQUERY"
        for value in node.values():
            reads |= _collect(value, calls, types)
    return reads
